"""The ``incdsl`` command: argument parsing and printing over the Python API, nothing more.

Exit codes: 0 success; 1 the budget is exceeded (``check``); 2 a mistake in the spec or the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

from incdsl import __version__, load, locate, render, threads
from incdsl.analysis import report
from incdsl.backends.pytorch.memory import DTYPES, OPTIMIZERS, Setting
from incdsl.errors import BudgetExceeded, IncdslError, OutputError
from incdsl.files import check_output, write_atomic
from incdsl.numbers import MAX_BUDGET, MAX_INT, NumberError, read_float, read_int, read_quantity

FORMAT_HELP = (
    "table: aligned columns fitted to the terminal (the least important dropped, and named, when it is "
    "narrow); markdown: every column; {more}json: the data (see the README's Outputs)"
)


TRAINING = ("train", "eval", "predict", "export", "quantize")

DESCRIPTION = (
    "Describe a convolutional network the way its paper does, as a table (a .inc spec), and get from it "
    "exact per-layer parameters and multiply-adds, a compute-budget check, a standalone PyTorch model "
    "file (or ONNX), Graphviz drawings, and a trainer."
)
EPILOG = "Start with: incdsl specs; incdsl stats googlenet. Each command has its own --help."


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (incdsl stats ... | head): stop quietly, as cat does
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell shows for a C program stopped the same way
    except KeyboardInterrupt:
        print("incdsl: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] and argv[0] in TRAINING:  # their options belong to incdsl.train's own parser
            return training(argv)
        args = _parse_arguments(_parser(), argv)
        return args.func(args) if isinstance(args, argparse.Namespace) else args
    except BudgetExceeded as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except IncdslError as exc:
        print(exc.format(), file=sys.stderr)
        return 2


def _parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse chose (2 for a usage error, 0 for --help), so
    that ``main`` returns a code rather than raising SystemExit when called from Python."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incdsl", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"incdsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec_help = "a .inc file, or the name of a shipped spec (see `incdsl specs`)"

    p = sub.add_parser("stats", help="print the per-layer table: params, multiply-adds, budget")
    p.add_argument("spec", help=spec_help)
    _format_option(p, csv=True)
    p.add_argument("--reference", metavar="TSV", help="a paper's printed table to compare with")
    p.add_argument("--batch", type=_batch, metavar="B", help="add activation memory at batch size B")
    p.add_argument(
        "--train",
        action="store_true",
        help="with --batch: a training step (saved for backward, gradients, optimizer state) and its peak",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="with --batch: fp32 (default), or autocast to bf16 (a CPU's) or fp16 (CUDA's)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="with --train: whose state to count (adamw)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("check", help="exit 0 if the spec is valid and within its budget")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--budget", type=_budget, help="multiply-adds allowed, like 1.5G (overrides the spec's)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "compile", help="write a standalone PyTorch model file (or ONNX, or an engine's deployable model)"
    )
    p.add_argument("spec", help=spec_help)
    p.add_argument(
        "-o", "--output", required=True, help="the .py (or .onnx) file to write; .onnx or .xml for --target"
    )
    p.add_argument(
        "--format", choices=("python", "onnx"), help="default: onnx for a .onnx output, else python"
    )
    p.add_argument(
        "--target",
        choices=("onnxruntime", "openvino"),
        help="a model for an inference engine, its graph optimizations applied: onnxruntime (an optimized "
        ".onnx) or openvino (IR: a .xml and its .bin)",
    )
    p.add_argument("--fp16", action="store_true", help="with --target openvino: weights stored as fp16")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="the inference build: BatchNorm folded, sibling 1x1 convolutions fused, channels_last",
    )
    p.add_argument("--compile", action="store_true", help="with --optimize: build() applies torch.compile")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("draw", help="draw the network with Graphviz (.svg, .png or .dot)")
    p.add_argument("spec", help=spec_help)
    p.add_argument("-o", "--output", required=True, help="out.svg, out.png or out.dot")
    p.add_argument(
        "--level",
        choices=("network", "block"),
        default="network",
        help="network: one box per stage, labelled as Table 1's row (default); block: each template call "
        "a cluster of its layers, its branches side by side",
    )
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser(
        "port-weights", help="write a foreign state_dict (another layout) in the spec's layout"
    )
    p.add_argument("spec", help=spec_help)
    p.add_argument("foreign", metavar="FOREIGN", help="a torch.save state_dict or a .safetensors file")
    p.add_argument("-o", "--output", required=True, help="the state_dict to write (torch.save)")
    p.add_argument("--quiet", action="store_true", help="do not print the mapping")
    p.set_defaults(func=cmd_port_weights)

    p = sub.add_parser("format", help="print a spec in the canonical layout (comments are dropped)")
    p.add_argument("spec", help=spec_help)
    p.add_argument("-o", "--output", help="write here instead of printing")
    p.set_defaults(func=cmd_format)

    p = sub.add_parser("specs", help="list the shipped specs")
    p.set_defaults(func=cmd_specs)

    p = sub.add_parser("fit", help="scale a spec's widths to the largest network within a MAC budget")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--budget", help="multiply-adds allowed, like 1.5G (default: the spec's budget)")
    p.add_argument("-o", "--output", help="the .inc file to write (default: print it)")
    p.add_argument("--multiple", type=int, default=8, help="round every width to a multiple of this (8)")
    p.add_argument(
        "--per-stage", action="store_true", help="a multiplier per stage, keeping each stage's share of MACs"
    )
    p.add_argument("--depth", action="store_true", help="scale the repeat counts of Nx rows too")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("diff", help="compare two specs stage by stage")
    p.add_argument("a", help=spec_help)
    p.add_argument("b", help=spec_help)
    _format_option(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("runs", help="a table of training runs: spec, params, MACs, best top-1, time")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by incdsl train --out")
    _format_option(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("plot", help="draw the training curves of runs (needs matplotlib)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by incdsl train --out")
    p.add_argument("-o", "--output", required=True, help="curves.png, .svg or .pdf")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="time the plain, optimized and compiled builds side by side (torch)")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--batch", default="1,8,32", help="eval batch sizes, comma-separated (1,8,32)")
    p.add_argument("--train-batch", default="16", help="the training step's batch size (16; 0: none)")
    p.add_argument("--rounds", default="5", help="measurements of each variant, interleaved (5)")
    p.add_argument("--min-time", default="1", metavar="SECONDS", help="the least time of one measurement (1)")
    p.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip torch.compile (minutes per shape)"
    )
    p.add_argument(
        "--compile-train", action="store_true", help="also the training step through torch.compile (slower)"
    )
    p.add_argument(
        "--engines",
        default="all",
        help="inference engines timed beside the builds: all (default: those installed; the others are "
        "listed as skipped), none, or a list like onnxruntime,openvino",
    )
    threads.add_option(p)
    _format_option(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("lsp", help="run the language server over stdio, for editors (needs pygls)")
    p.set_defaults(func=cmd_lsp)

    # Listed for `incdsl --help`; main() hands their arguments to incdsl.train's parser.
    sub.add_parser("train", help="train a spec or model.py (incdsl train --help)")
    sub.add_parser("eval", help="evaluate checkpoints (incdsl eval --help)")
    sub.add_parser("predict", help="classify images with a checkpoint (incdsl predict --help)")
    sub.add_parser("export", help="a checkpoint as TorchScript, ONNX or safetensors (incdsl export --help)")
    sub.add_parser("quantize", help="a checkpoint's int8 ONNX build, calibrated (incdsl quantize --help)")
    return parser


def _format_option(parser: argparse.ArgumentParser, csv: bool = False) -> None:
    formats = ("table", "markdown", *(["csv"] * csv), "json")
    more = "csv: exact counts, one row per layer; " if csv else ""
    parser.add_argument("--format", choices=formats, default="table", help=FORMAT_HELP.format(more=more))


def cmd_stats(args) -> int:
    stats = report.compute(load(args.spec), _memory_setting(args))
    matches = None
    if args.reference:
        from incdsl.analysis import reference

        matches = reference.compare(stats, reference.load(args.reference))
    render.emit(report.document(stats, matches), args.format)
    return 0


def _batch(text: str) -> int:
    """``--batch``: a batch size, read as the trainer's --batch-size is."""
    try:
        return read_int(text, 1, MAX_INT)
    except NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _memory_setting(args) -> Setting | None:
    """What ``--batch``, ``--train``, ``--dtype`` and ``--optimizer`` ask for; None without --batch."""
    if args.batch is None:
        given = [f"--{name}" for name in ("train", "dtype", "optimizer") if getattr(args, name)]
        if given:
            raise IncdslError(f"{', '.join(given)} needs --batch", hint="like: --batch 32 --train")
        return None
    if args.optimizer and not args.train:
        raise IncdslError("--optimizer needs --train", hint="an optimizer's state is kept in training")
    return Setting(args.batch, args.train, args.dtype or "fp32", optimizer=args.optimizer or "adamw")


def cmd_check(args) -> int:
    net = load(args.spec)
    stats = report.compute(net)
    budget = args.budget if args.budget is not None else stats.budget
    print(f"{net.name}: {stats.params:,} params, {stats.macs:,} multiply-adds (inference)")
    print(_parameter_memory(stats).line)
    if budget is None:
        print("no budget declared; the spec is valid")
        return 0
    verdict = report.budget_verdict(stats.macs, budget)
    if stats.macs > budget:
        raise BudgetExceeded(verdict)
    print(verdict)
    return 0


def _budget(text: str) -> int:
    """``--budget``: a count of multiply-adds, validated as a spec's ``budget`` is (incdsl.numbers)."""
    try:
        return read_quantity(text, 1, MAX_BUDGET)
    except NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class ParameterMemory:
    """What the parameters take as float32 (with the aux heads, for training), and whether that is
    more than this machine's free memory."""

    line: str
    too_large: bool


def _parameter_memory(stats: report.Stats) -> ParameterMemory:
    from incdsl.memory import FLOAT32_BYTES, available_ram, human_bytes

    total = stats.params + sum(a.params for a in stats.aux)
    line = f"parameters: {human_bytes(FLOAT32_BYTES * stats.params)} as float32"
    if total != stats.params:
        line += f" ({human_bytes(FLOAT32_BYTES * total)} with the aux heads, for training)"
    free = available_ram()
    too_large = free is not None and FLOAT32_BYTES * total > free
    if too_large:
        line += f"; more than this machine's {human_bytes(free)} of free memory"
    return ParameterMemory(line, too_large)


def _output(args) -> None:
    """Refuse a bad ``-o`` (empty, a directory or device, the input spec) before any work is done."""
    check_output(args.output, inputs=[locate(args.spec)])


def cmd_compile(args) -> int:
    if args.compile and not args.optimize:
        raise IncdslError(
            "--compile goes with --optimize", hint="incdsl compile SPEC --optimize --compile -o m.py"
        )
    if args.target is not None:
        return _compile_for_engine(args)
    if args.fp16:
        raise IncdslError(
            "--fp16 goes with --target openvino", hint="incdsl compile SPEC --target openvino --fp16 -o m.xml"
        )
    _output(args)
    net = load(args.spec)
    _warn_about_memory(net)
    if (args.format or ("onnx" if args.output.lower().endswith(".onnx") else "python")) == "onnx":
        from incdsl.backends import onnx

        onnx.export(net, args.output, optimize=args.optimize, progress=_say)
    else:
        from incdsl import compile_source

        source = compile_source(net, optimize=args.optimize, compiled=args.compile)
        write_atomic(args.output, source, inputs=[locate(args.spec)])
    print(f"wrote {args.output}")
    return 0


def _warn_about_memory(net) -> None:
    memory = _parameter_memory(report.compute(net))
    if memory.too_large:  # the file can be written; building the model cannot work
        print(f"warning: {memory.line}", file=sys.stderr)


def _say(line: str) -> None:
    """A progress line, on stderr."""
    print(line, file=sys.stderr, flush=True)


def _compile_for_engine(args) -> int:
    """``--target onnxruntime|openvino``: the engine's model of the plain build (engines.py)."""
    from incdsl.backends import engines

    given = [flag for flag, on in (("--format", args.format), ("--optimize", args.optimize)) if on]
    if given:
        raise IncdslError(
            f"{' and '.join(given)} cannot go with --target: the engine optimizes the graph itself",
            hint=f"incdsl compile {args.spec} --target {args.target} -o FILE",
        )
    files = engines.outputs(args.target, args.output)
    for path in files:  # refused before minutes of export, not after
        if not check_output(path, inputs=[locate(args.spec)]).parent.is_dir():
            raise OutputError(f"cannot write {path}: No such file or directory")
    net = load(args.spec)
    _warn_about_memory(net)
    written = engines.write(net, args.target, args.output, fp16=args.fp16, progress=_say)
    how = {
        "onnxruntime": f"onnxruntime.InferenceSession({str(written[0])!r})",
        "openvino": f"openvino.Core().compile_model({str(written[0])!r}, 'CPU')",
    }[args.target]
    c, h, w = net.input.as_list()
    print(f"wrote {' and '.join(map(str, written))}")
    print(f"load it with {how}; input 'x': float32 N x {c} x {h} x {w}, output 'logits'")
    return 0


def cmd_port_weights(args) -> int:
    import torch

    from incdsl.files import replacing
    from incdsl.tools.port import layer_table, port_state, read_foreign

    check_output(args.output, inputs=[locate(args.spec), args.foreign])
    net = load(args.spec)
    port = port_state(net, read_foreign(args.foreign))
    if not args.quiet:
        rows = layer_table(port)
        width = max(len(layer) for layer, _, _ in rows)
        for layer, modules, shape in rows:
            print(f"{layer:<{width}}  <-  {modules}  [{shape}]")
    with replacing(args.output, inputs=[locate(args.spec), args.foreign]) as tmp:
        torch.save(port.state, tmp)
    aux = " (with the aux heads)" if port.aux else " (without the aux heads: build with aux_logits=False)"
    aux = aux if net.auxes else ""
    filled = f"; {len(port.filled)} batch counts the file lacks set to 0" if port.filled else ""
    print(f"wrote {args.output}: {len(port.pairs)} tensors in {net.name}'s layout{aux}{filled}")
    return 0


def cmd_draw(args) -> int:
    from incdsl.backends import graphviz

    _output(args)
    graphviz.render(graphviz.to_dot(load(args.spec), args.level), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_format(args) -> int:
    from incdsl import read
    from incdsl.syntax.formatter import format_spec
    from incdsl.syntax.parser import parse

    if args.output is not None:
        _output(args)
    text = format_spec(parse(*read(args.spec)))
    if args.output is not None:
        write_atomic(args.output, text, inputs=[locate(args.spec)])
    else:
        print(text, end="")
    return 0


def cmd_specs(args) -> int:
    from incdsl.resources import shipped_specs

    for name, path in shipped_specs().items():
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        print(f"{name:20} {first.lstrip('# ')}")
    return 0


def cmd_fit(args) -> int:
    from incdsl import read
    from incdsl.analysis import fit
    from incdsl.syntax.parser import parse

    if args.output is not None:  # -o '' and -o SPEC are refused, as by every command that writes
        _output(args)
    text, path = read(args.spec)
    spec = parse(text, path)
    try:
        budget = read_quantity(args.budget, 1, MAX_BUDGET) if args.budget is not None else spec.budget
    except NumberError as error:
        raise IncdslError(f"--budget: {error}") from None
    if budget is None:
        raise IncdslError(f"{path} declares no budget", hint="pass --budget, like --budget 1.5G")
    command = " ".join(
        ["incdsl fit", args.spec, f"--budget {args.budget or budget}"]
        + [f"--multiple {args.multiple}"] * (args.multiple != 8)
        + ["--per-stage"] * args.per_stage
        + ["--depth"] * args.depth
    )
    fitted = fit.fit(spec, budget, args.multiple, args.per_stage, args.depth, command)
    how = "per stage, MACs ratio" if args.per_stage else "width multiplier"
    depth = f", repeats x {fitted.scaling.depth:.4f}" if args.depth else ""
    summary = (
        f"{how} {fitted.multiplier:.4f}{depth}: {fitted.macs:,} multiply-adds, {fitted.macs / budget:.1%} of "
        f"{budget:,} (was {fitted.original_macs:,}); {fitted.params:,} params"
    )
    if args.output is not None:
        write_atomic(args.output, fitted.text, inputs=[locate(args.spec)])
        print(summary)
        print(f"wrote {args.output} (compare: incdsl diff {args.spec} {args.output})")
    else:
        print(summary, file=sys.stderr)
        print(fitted.text, end="")
    return 0


def cmd_diff(args) -> int:
    from incdsl.analysis import diff

    result = diff.compare(report.compute(load(args.a)), report.compute(load(args.b)))
    render.emit(diff.document(result, (args.a, args.b)), args.format)
    return 0


def cmd_runs(args) -> int:
    from incdsl.tools import runs

    render.emit(runs.document([runs.read_run(path) for path in args.runs]), args.format)
    return 0


def cmd_plot(args) -> int:
    from incdsl.tools import runs

    runs.plot([runs.read_run(path) for path in args.runs], args.output, args.title)
    print(f"wrote {args.output}")
    return 0


def cmd_bench(args) -> int:
    from incdsl.tools import bench

    batches = bench.parse_batches(args.batch)
    train_batch = bench.check_train_batch(_option(read_int, "--train-batch", args.train_batch, 0))
    rounds = _option(read_int, "--rounds", args.rounds, 1, 1000)
    min_time = _option(read_float, "--min-time", args.min_time, 0, 600)
    engines = _engines(args.engines)
    locate(args.spec)  # an unknown spec is refused before torch is imported
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise IncdslError(f"incdsl bench needs torch ({error})", hint="pip install 'incdsl[torch]'") from None

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = bench.run(
        args.spec, batches, train_batch, rounds, args.compile, min_time,
        train_compile=args.compile_train, threads=args.threads, progress=say, engines=engines,
    )  # fmt: skip
    render.emit(bench.document(result), args.format)
    return 0


def _engines(text: str) -> tuple[str, ...]:
    """``bench --engines``: all, none, or names from bench.ENGINES."""
    from incdsl.errors import did_you_mean
    from incdsl.tools import bench

    if text.strip() in ("all", ""):
        return bench.ENGINES
    if text.strip() == "none":
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    for name in names:
        if name not in bench.ENGINES:
            raise IncdslError(
                f"--engines: unknown engine '{name}'",
                hint=did_you_mean(name, bench.ENGINES) or f"one of {', '.join(bench.ENGINES)}, all or none",
            )
    return names


def _option(reader, name: str, text: str, *bounds):
    """A number given on the command line, read by incdsl.numbers; an IncdslError naming the option."""
    try:
        return reader(text, *bounds)
    except NumberError as error:
        raise IncdslError(f"{name}: {error}") from None


def cmd_lsp(args) -> int:
    try:
        from incdsl.tools import lsp
    except ImportError as error:
        raise IncdslError(
            f"incdsl lsp needs pygls ({error})", hint="pip install 'incdsl[lsp]' (or pip install pygls)"
        ) from None
    return lsp.main()


def training(argv: list[str]) -> int:
    """``train``, ``eval``, ``predict``, ``export`` and ``quantize`` live in incdsl.train, which
    imports torch: loaded only when asked for."""
    args = _parse_arguments(training_parser(), argv)
    return args.func(args) if isinstance(args, argparse.Namespace) else args


def training_parser() -> argparse.ArgumentParser:
    """The parser of the training commands (``incdsl train ...``), incdsl.train's."""
    from incdsl.train import cli as train_cli

    parser = argparse.ArgumentParser(prog="incdsl")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cli.add_train_parser(sub)
    train_cli.add_eval_parser(sub)
    train_cli.add_predict_parser(sub)
    train_cli.add_export_parser(sub)
    train_cli.add_quantize_parser(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
