"""The ``incdsl`` command: argument parsing and printing over the Python API, nothing more.

Exit codes: 0 success; 1 the budget is exceeded (``check``); 2 a mistake in the spec or the command.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, load, report
from .errors import BudgetExceeded, IncdslError, SpecSyntaxError
from .files import write_atomic

FORMATS = ("table", "markdown", "csv", "json")


TRAINING = ("train", "eval")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] and argv[0] in TRAINING:  # their options belong to incdsl.train's own parser
            return training(argv)
        args = _parser().parse_args(argv)
        return args.func(args)
    except BudgetExceeded as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except IncdslError as exc:
        print(exc.format(), file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incdsl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"incdsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec_help = "a .inc file, or the name of a shipped spec (see `incdsl specs`)"

    p = sub.add_parser("stats", help="print the per-layer table: params, multiply-adds, budget")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--reference", metavar="TSV", help="a paper's printed table to compare with")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("check", help="exit 0 if the spec is valid and within its budget")
    p.add_argument("spec", help=spec_help)
    p.add_argument("--budget", help="multiply-adds allowed, like 1.5G (overrides the spec's)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("compile", help="write a standalone PyTorch model file (or ONNX)")
    p.add_argument("spec", help=spec_help)
    p.add_argument("-o", "--output", required=True, help="the .py (or .onnx) file to write")
    p.add_argument(
        "--format", choices=("python", "onnx"), help="default: onnx for a .onnx output, else python"
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("draw", help="draw the network with Graphviz (.svg, .png or .dot)")
    p.add_argument("spec", help=spec_help)
    p.add_argument("-o", "--output", required=True, help="out.svg, out.png or out.dot")
    p.add_argument("--level", choices=("network", "block"), default="network")
    p.set_defaults(func=cmd_draw)

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
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("runs", help="a table of training runs: spec, params, MACs, best top-1, time")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by incdsl train --out")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("plot", help="draw the training curves of runs (needs matplotlib)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by incdsl train --out")
    p.add_argument("-o", "--output", required=True, help="curves.png, .svg or .pdf")
    p.add_argument("--title", help="the figure's title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("lsp", help="run the language server over stdio, for editors (needs pygls)")
    p.set_defaults(func=cmd_lsp)

    # Listed for `incdsl --help`; main() hands their arguments to incdsl.train's parser.
    sub.add_parser("train", help="train a spec or model.py (incdsl train --help)")
    sub.add_parser("eval", help="evaluate checkpoints (incdsl eval --help)")
    return parser


def cmd_stats(args) -> int:
    stats = report.compute(load(args.spec))
    matches = None
    if args.reference:
        from . import reference

        matches = reference.compare(stats, reference.load(args.reference))
    if args.format == "json":
        data = report.to_dict(stats)
        if matches is not None:
            data["reference"] = reference.to_dict(matches)
        import json

        print(json.dumps(data, indent=2))
    elif args.format == "csv":
        print(report.to_csv(stats), end="")
    elif args.format == "markdown":
        print(report.to_markdown(stats))
    else:
        _print_table(stats, matches)
    return 0


def _print_table(stats, matches) -> None:
    from rich.console import Console

    console = Console(width=200 if not sys.stdout.isatty() else None)
    console.print(report.to_rich(stats, matches))
    console.print(report.summary(stats), highlight=False)
    console.print(
        "conventions: " + "; ".join(f"{k}: {v}" for k, v in report.CONVENTIONS.items()), style="dim"
    )
    if matches is not None:
        from .reference import disagreements

        lines = disagreements(matches)
        console.print(f"{len(lines)} printed figure(s) disagree with the layer shapes:", highlight=False)
        for line in lines:
            console.print(f"  ✗ {line}", highlight=False, markup=False)


def cmd_check(args) -> int:
    net = load(args.spec)
    stats = report.compute(net)
    budget = _quantity(args.budget) if args.budget else stats.budget
    print(f"{net.name}: {stats.params:,} params, {stats.macs:,} multiply-adds (inference)")
    if budget is None:
        print("no budget declared; the spec is valid")
        return 0
    verdict = report.budget_verdict(stats.macs, budget)
    if stats.macs > budget:
        raise BudgetExceeded(verdict)
    print(verdict)
    return 0


def _quantity(text: str) -> int:
    from .parser import quantity

    try:
        return quantity(text[:-1] + text[-1:].upper())
    except ValueError:
        raise SpecSyntaxError(f"--budget takes a count like 1.5G or 1500000000, not {text!r}") from None


def cmd_compile(args) -> int:
    net = load(args.spec)
    if (args.format or ("onnx" if args.output.endswith(".onnx") else "python")) == "onnx":
        from .backends import onnx

        onnx.export(net, args.output)
    else:
        from . import compile_source

        write_atomic(args.output, compile_source(net))
    print(f"wrote {args.output}")
    return 0


def cmd_draw(args) -> int:
    from .backends import graphviz

    graphviz.render(graphviz.to_dot(load(args.spec), args.level), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_format(args) -> int:
    from . import read
    from .formatter import format_spec
    from .parser import parse

    text = format_spec(parse(*read(args.spec)))
    if args.output:
        write_atomic(args.output, text)
    else:
        print(text, end="")
    return 0


def cmd_specs(args) -> int:
    from .resources import shipped_specs

    for name, path in shipped_specs().items():
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        print(f"{name:20} {first.lstrip('# ')}")
    return 0


def cmd_fit(args) -> int:
    from . import fit, read
    from .parser import parse

    text, path = read(args.spec)
    spec = parse(text, path)
    budget = _quantity(args.budget) if args.budget else spec.budget
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
    if args.output:
        write_atomic(args.output, fitted.text)
        print(summary)
        print(f"wrote {args.output} (compare: incdsl diff {args.spec} {args.output})")
    else:
        print(summary, file=sys.stderr)
        print(fitted.text, end="")
    return 0


def cmd_diff(args) -> int:
    from . import diff

    names = (args.a, args.b)
    result = diff.compare(report.compute(load(args.a)), report.compute(load(args.b)))
    if args.format == "json":
        import json

        print(json.dumps(diff.to_dict(result, names), indent=2))
    elif args.format == "markdown":
        print(diff.to_markdown(result, names))
    else:
        from rich.console import Console

        console = Console(width=200 if not sys.stdout.isatty() else None)
        console.print(diff.to_rich(result, names))
        console.print(diff.totals(result, names), highlight=False, markup=False)
    return 0


def cmd_runs(args) -> int:
    from . import runs

    found = [runs.read_run(path) for path in args.runs]
    if args.format == "json":
        import json

        print(json.dumps([runs.to_dict(run) for run in found], indent=2))
    elif args.format == "markdown":
        print(runs.to_markdown(found), end="")
    else:
        from rich.console import Console

        Console(width=200 if not sys.stdout.isatty() else None).print(runs.to_rich(found))
    return 0


def cmd_plot(args) -> int:
    from . import runs

    runs.plot([runs.read_run(path) for path in args.runs], args.output, args.title)
    print(f"wrote {args.output}")
    return 0


def cmd_lsp(args) -> int:
    try:
        from . import lsp
    except ImportError as error:
        raise IncdslError(
            f"incdsl lsp needs pygls ({error})", hint="pip install 'incdsl[lsp]' (or pip install pygls)"
        ) from None
    return lsp.main()


def training(argv: list[str]) -> int:
    """``train`` and ``eval`` live in incdsl.train, which imports torch: loaded only when asked for."""
    from .train import cli as train_cli

    parser = argparse.ArgumentParser(prog="incdsl")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cli.add_train_parser(sub)
    train_cli.add_eval_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
