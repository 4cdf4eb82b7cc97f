"""The README's "Performance" figures: ``incdsl bench`` over the Inception specs, the trainer against a
bare loop, and the time of ``incdsl compile`` for every shipped spec.

Prints markdown, ready to paste under the README's "Performance" heading (progress goes to stderr).
Every figure is a ratio of runs measured side by side and interleaved in this one process, or a
median with its range; threads are torch's default. The whole run took 26 minutes on a 2-core CPU
(torch.compile: 2-5 s per batch size for googlenet_tv and inception_v3, 26-46 s for the family
specs). Saved runs (--json) can be rendered again, together, with --render.

    python benchmarks/speed.py                                    # everything
    python benchmarks/speed.py --specs googlenet_tv,inception_v3 --json a.json
    python benchmarks/speed.py --quick --no-compile               # batch 8 and a training step only
    python benchmarks/speed.py --render a.json b.json --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from incdsl import load as incdsl_load
from incdsl import stats
from incdsl.resources import shipped_specs
from incdsl.tools import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPECS = ("googlenet_tv", "inception_v3", "inception_v4", "inception_resnet_v2", "bn_inception")
TARGETS = {spec: {"optimized": 2.0, "compiled": 2.3} for spec in ("googlenet_tv", "inception_v3")}
TARGET_BATCH = 8
TRAINER_TARGET = 0.95
COMPILE_TARGET = 0.5  # seconds: "well under a second" for incdsl compile


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return list(os.getloadavg())


# the trainer against a bare loop ------------------------------------------------------------------
def trainer_ratio(target: str, recipe: str, images: int, batch: int, rounds: int) -> dict:
    """bench_train's two measurements, alternating (A B, B A, ...) after a short warm-up of each."""
    from bench_train import bare_throughput, trainer_throughput

    measure = {"trainer": trainer_throughput, "bare": bare_throughput}
    before = load_average()
    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's epoch lines are progress, not the page
        for name in measure:
            measure[name](target, 2 * batch, recipe, batch, 0)
        for round_ in range(rounds):
            say(f"trainer against a bare loop: round {round_ + 1} of {rounds}")
            for name in measure if round_ % 2 == 0 else reversed(measure):
                rates[name].append(measure[name](target, images, recipe, batch, round_))
    ratios = [t / b for t, b in zip(rates["trainer"], rates["bare"])]
    return {"target": target, "recipe": recipe, "images": images, "batch": batch, "rates": rates,
            "ratios": ratios, "load_average": {"before": before, "after": load_average()}}  # fmt: skip


def trainer_markdown(result: dict) -> str:
    ratio = bench.Spread.of(result["ratios"])
    trainer, bare = (statistics.median(result["rates"][name]) for name in ("trainer", "bare"))
    verdict = "meets" if ratio.median >= TRAINER_TARGET else "MISSES"
    load = result["load_average"]
    return (
        f"**The trainer against a bare hand-written loop** (`benchmarks/bench_train.py`'s two loops: "
        f"{result['target']}, `{result['recipe']}` recipe, batch {result['batch']}, {result['images']:,} "
        f"fake images per epoch, {len(result['ratios'])} rounds, alternating): trainer {trainer:,.1f} img/s, "
        f"bare loop {bare:,.1f} img/s, ratio **{bench.format_ratio(ratio)}**, which {verdict} the target "
        f">= {TRAINER_TARGET}. Load average {bench.format_load(load['before'])} before, "
        f"{bench.format_load(load['after'])} after."
    )


# incdsl compile, every shipped spec ---------------------------------------------------------------
def command_seconds(spec: str, repeats: int) -> bench.Spread:
    """Wall time of ``incdsl compile SPEC -o model.py`` in a fresh process (Python's start-up included)."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "incdsl", "compile", spec, "-o", str(Path(folder) / "model.py")]
        for _ in range(repeats + 1):  # the first one warms the file cache
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
    return bench.Spread.of(times[1:])


def compile_times(repeats: int) -> dict:
    rows, before = [], load_average()
    for spec in shipped_specs():
        say(f"timing incdsl compile {spec}")
        numbers = stats(spec)
        rows.append({
            "spec": spec, "params": numbers.params, "macs": numbers.macs,
            "source": bench.source_seconds(spec, repeats).__dict__,
            "optimized": bench.source_seconds(spec, repeats, optimize=True).__dict__,
            "unformatted": bench.source_seconds(spec, repeats, formatted=False).__dict__,
            "command": command_seconds(spec, repeats).__dict__,
        })  # fmt: skip
    return {"repeats": repeats, "rows": rows, "load_average": {"before": before, "after": load_average()}}


def compile_markdown(times: dict) -> str:
    def ms(spread: dict) -> str:
        s = bench.Spread(**spread)
        return f"{s.median * 1000:,.0f} ({s.low * 1000:,.0f}-{s.high * 1000:,.0f})"

    lines = [
        "**`incdsl compile`, every shipped spec**, milliseconds:",
        "",
        "| spec | params | multiply-adds | source | `--optimize` source | unformatted source | the command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in times["rows"]:
        lines.append(
            f"| {row['spec']} | {row['params']:,} | {row['macs']:,} | {ms(row['source'])} | "
            f"{ms(row['optimized'])} | {ms(row['unformatted'])} | {ms(row['command'])} |"
        )
    slowest = max(max(row["source"]["median"], row["optimized"]["median"]) for row in times["rows"])
    verdict = "meets" if slowest < COMPILE_TARGET else "MISSES"
    load = times["load_average"]
    lines += [
        "",
        f"Medians of {times['repeats']} (lowest-highest). *Source*: what `incdsl compile` does in a warm "
        "process (read, parse, IR, passes, code generation, black); *unformatted*: the same without black; "
        "*the command*: `incdsl compile SPEC -o model.py` in a fresh process, Python's start-up and imports "
        f"included. Slowest source: {slowest * 1000:,.0f} ms, which {verdict} the target (well under a "
        f"second: below {COMPILE_TARGET:g} s). Load average {bench.format_load(load['before'])} before, "
        f"{bench.format_load(load['after'])} after.",
    ]
    return "\n".join(lines)


# what bounds the ratio ----------------------------------------------------------------------------
CONV_OPS = ("aten::mkldnn_convolution", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
            "mkldnn::_convolution_pointwise")  # fmt: skip


def matmul_rate(size: int = 2048, repeats: int = 7) -> float:
    """The CPU's float32 matmul rate in GFLOP/s (the fastest of ``repeats`` products of two square
    matrices): about the most arithmetic a convolution can hope for."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / min(times) / 1e9


def ceiling(spec: str, batch: int, rounds: int = 5) -> dict:
    """Where the time of each build goes (eval): its wall time per batch (the median of ``rounds``,
    the builds taking turns) and the convolutions' share of its op time (the profiler, over 3
    forwards). If everything but its convolutions took no time, the optimized build would run at
    plain time / the optimized build's convolution time: the most fusing and layout can give."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    net = incdsl_load(spec)
    builds = dict(zip(("plain", "optimized"), bench.builds(net)))
    x = torch.randn(batch, *net.input.as_list())
    row: dict = {"spec": spec, "batch": batch, "macs": stats(spec).macs}
    with torch.inference_mode():
        for name, model in builds.items():
            model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    model(x)
            events = prof.key_averages()
            conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
            row[name] = {"convolution_share": conv / sum(e.self_cpu_time_total for e in events)}
        times: dict[str, list[float]] = {name: [] for name in builds}
        for round_ in range(rounds):
            for name in builds if round_ % 2 == 0 else reversed(builds):
                started = time.perf_counter()
                builds[name](x)
                times[name].append(time.perf_counter() - started)
    for name in builds:
        row[name]["seconds"] = statistics.median(times[name])
    return row


def ceiling_markdown(rows: list[dict], matmul: float) -> str:
    lines = [
        f"**What bounds the ratio** (eval at batch {rows[0]['batch']}: wall time per batch, the median "
        "of 5 interleaved; the convolutions' share of the op time from the profiler; a float32 "
        f"2048x2048 matmul ran at up to {matmul:,.0f} GFLOP/s in the same run):",
        "",
        "| spec | plain: ms per batch | convolutions | optimized: ms per batch | convolutions | "
        "convolutions' GFLOP/s (optimized) | ratio | ceiling: plain / optimized convolutions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        plain, fast = row["plain"], row["optimized"]
        conv = fast["seconds"] * fast["convolution_share"]
        rate = 2 * row["macs"] * row["batch"] / conv / 1e9
        lines.append(
            f"| {row['spec']} | {plain['seconds'] * 1000:,.0f} | {plain['convolution_share']:.0%} | "
            f"{fast['seconds'] * 1000:,.0f} | {fast['convolution_share']:.0%} | {rate:,.0f} | "
            f"{plain['seconds'] / fast['seconds']:.2f}x | {plain['seconds'] / conv:.2f}x |"
        )
    lines += [
        "",
        "The ceiling is the ratio the optimized build would reach if nothing but its convolutions took "
        "time (GFLOP/s counts every multiply-add of the network as two operations). Where the "
        "convolutions already run near the matmul rate, only less arithmetic, not a better schedule "
        "of the same arithmetic, could go past it.",
    ]
    return "\n".join(lines)


# the whole page -----------------------------------------------------------------------------------
def targets_markdown(results: list[bench.BenchResult]) -> str:
    lines = [f"Targets (issue 10; CPU, eval at batch {TARGET_BATCH}, ratio to the plain build):", ""]
    for result in results:
        for variant, target in TARGETS.get(Path(result.spec).stem, {}).items():
            m = result.get("eval", TARGET_BATCH, variant)
            if m is None or m.ratio is None:
                got = "not measured" if m is None else f"not measured ({m.error})"
            else:
                verdict = "meets" if m.ratio.median >= target else "MISSES"
                got = f"{bench.format_ratio(m.ratio)}, which {verdict} it"
            lines.append(f"- {Path(result.spec).stem}, {variant} >= {target}x: {got}")
    return "\n".join(lines)


def conditions_markdown(results: list[bench.BenchResult]) -> str:
    lines = ["| spec | started (UTC) | rounds | seconds per measurement | load average before | after |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(
            f"| {Path(r.spec).stem} | {r.started} | {r.rounds} | >= {r.min_time:g} | "
            f"{bench.format_load(r.load_before)} | {bench.format_load(r.load_after)} |"
        )
    return "\n".join(lines)


def page(
    results: list[bench.BenchResult], trainer: dict | None, compiles: dict | None, commands, bounds=None
) -> str:
    first = results[0] if results else None
    machine = f"{first.machine}; torch {first.torch}, {bench.threads(first)}" if first else ""
    lines = [
        f"Measured with {', '.join(f'`{c}`' for c in commands)}" + (f": {machine}." if machine else "."),
        "",
    ]
    if results:
        lines += [
            "Images per second (medians) and ratios to the plain build (the median of the rounds' ratios, "
            "lowest-highest round in brackets); *compile s*: the compiled variant's first call "
            "(compilation and one pass). Eval runs under `torch.inference_mode()`; the training step "
            "(forward, backward, SGD) is the plain build's: the optimized build is inference-only.",
            "",
            bench.markdown_table(results),
            "",
            targets_markdown(results),
            "",
            conditions_markdown(results),
            "",
        ]
    if trainer:
        lines += [trainer_markdown(trainer), ""]
    if bounds:
        lines += [ceiling_markdown(bounds["rows"], bounds["matmul_gflops"]), ""]
    if compiles:
        lines += [compile_markdown(compiles), ""]
    return "\n".join(lines)


def measure(args) -> dict:
    batches = bench.parse_batches(args.batch or ("8" if args.quick else "1,8,32"))
    rounds = args.rounds or (3 if args.quick else bench.ROUNDS)
    min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else bench.MIN_TIME)
    results = []
    for spec in filter(None, args.specs.split(",")):
        say(f"== {spec}")
        result = bench.run(
            spec, batches, args.train_batch, rounds, args.compile, min_time,
            train_compile=args.compile and args.compile_train, threads=args.threads, progress=say,
        )  # fmt: skip
        results.append(bench.to_dict(result))
    trainer = None
    if args.trainer:
        images, trainer_rounds = (512, 2) if args.quick else (1024, 3)
        trainer = trainer_ratio("mini_googlenet", "fast", images, 64, trainer_rounds)
    compiles = compile_times(args.compile_repeats) if args.compile_times else None
    bounds = None
    if args.ceiling:
        say("profiling where the time goes")
        rows = [ceiling(spec, TARGET_BATCH) for spec in TARGETS]
        bounds = {"rows": rows, "matmul_gflops": matmul_rate()}
    command = " ".join(["python", "benchmarks/speed.py", *(sys.argv[1:])])
    return {
        "commands": [command],
        "results": results,
        "trainer": trainer,
        "compile": compiles,
        "ceiling": bounds,
    }


def merged(files: list[Path]) -> dict:
    """Saved runs together: every spec's result (a later file's wins), the last trainer and compile."""
    data: dict = {"commands": [], "results": [], "trainer": None, "compile": None, "ceiling": None}
    for path in files:
        saved = json.loads(path.read_text())
        data["commands"] += saved["commands"]
        specs = {r["spec"] for r in saved["results"]}
        data["results"] = [r for r in data["results"] if r["spec"] not in specs] + saved["results"]
        data["trainer"] = saved["trainer"] or data["trainer"]
        data["compile"] = saved["compile"] or data["compile"]
        data["ceiling"] = saved.get("ceiling") or data["ceiling"]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--specs", default=",".join(SPECS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="eval at batch 8 only, 3 rounds, shorter runs")
    parser.add_argument("--batch", help="eval batch sizes (default 1,8,32; 8 with --quick)")
    parser.add_argument("--train-batch", type=int, default=bench.TRAIN_BATCH, help="0: no training step")
    parser.add_argument("--rounds", type=int, help="default 5 (3 with --quick)")
    parser.add_argument("--min-time", type=float, help="seconds per measurement (1; 0.3 with --quick)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument(
        "--compile-train", action="store_true", help="also the training step through torch.compile (slow)"
    )
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's default)")
    parser.add_argument("--no-trainer", dest="trainer", action="store_false", help="skip the trainer's ratio")
    parser.add_argument("--no-compile-times", dest="compile_times", action="store_false")
    parser.add_argument(
        "--no-ceiling", dest="ceiling", action="store_false", help="skip the profile of where the time goes"
    )
    parser.add_argument("--compile-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--render", type=Path, nargs="+", metavar="JSON", help="measure nothing: render these"
    )
    parser.add_argument("--write", type=Path, help="also write the page here (benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    data = merged(args.render) if args.render else measure(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    results = [bench.from_dict(r) for r in data["results"]]
    text = page(results, data["trainer"], data["compile"], data["commands"], data.get("ceiling"))
    print(text)
    if args.write:
        args.write.write_text("# Benchmark results\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
