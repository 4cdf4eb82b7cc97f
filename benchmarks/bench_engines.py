"""The engines' comparison of the README's "Performance" (issue 17): ms per batch of 8, eval, for the
plain build (1.00x), the ``--optimize`` build, ONNX Runtime and OpenVINO, at 1 and 2 threads.

    python benchmarks/bench_engines.py [--specs googlenet_tv,inception_v3,resnet50,mobilenet_v2]
        [--threads 1,2] [--rounds 5] [--min-time 1] [--quick] [--json FILE] [--render FILE]

Each (spec, threads) is one ``incdsl bench`` run (incdsl.tools.bench.run): the same weights and input for
every variant, interleaved rounds, a ratio taken within each round and reported as the median with the
lowest and highest round. Prints a markdown table, the load average (``uptime``'s) before and after
every run, and the CPU (lscpu's model name). ``--quick``: googlenet_tv and mobilenet_v2, 1 thread,
3 rounds of at least 0.3 s. ``--json FILE`` keeps every figure; ``--render FILE`` prints saved ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incdsl.tools import bench  # noqa: E402

SPECS = ("googlenet_tv", "inception_v3", "resnet50", "mobilenet_v2")
VARIANTS = ("plain", "optimized", *bench.ENGINES)
NAMES = {"plain": "incdsl plain", "optimized": "incdsl `--optimize`", "onnxruntime": "ONNX Runtime",
         "openvino": "OpenVINO"}  # fmt: skip
BATCH = 8


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return bench.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return bench.machine()


def cell(result: bench.BenchResult, variant: str) -> str:
    m = result.get("eval", BATCH, variant)
    if m is None:
        return "-"
    if m.error is not None:
        return "skipped" if m.error.startswith("not installed") else "failed"
    ms = 1000 * BATCH / m.img_per_s
    ratio = m.ratio
    bold = "**" if bench.fastest(result, BATCH) is m else ""
    return f"{ms:,.0f} ms ({bold}{ratio.median:.2f}x{bold}, {ratio.low:.2f}-{ratio.high:.2f})"


def table(results: list[bench.BenchResult]) -> str:
    threads = sorted({r.threads for r in results})
    lines = []
    for count in threads:
        chosen = [r for r in results if r.threads == count]
        names = [Path(r.spec).stem for r in chosen]
        lines += [f"| {count} thread{'s' * (count != 1)} | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]  # fmt: skip
        for variant in VARIANTS:
            lines.append(f"| {NAMES[variant]} | " + " | ".join(cell(r, variant) for r in chosen) + " |")
        diffs = [max((m.max_diff or 0.0) for m in r.measurements if m.max_diff is not None) for r in chosen]
        lines.append(
            "| logits' largest difference from plain | " + " | ".join(f"{d:.0e}" for d in diffs) + " |"
        )
        lines.append("")
    return "\n".join(lines)


def conditions(results: list[bench.BenchResult], cpu: str) -> str:
    first = results[0]
    loads = "; ".join(
        f"{Path(r.spec).stem} at {r.threads}: {bench.format_load(r.load_before)} before, "
        f"{bench.format_load(r.load_after)} after"
        for r in results
    )
    return (
        f"{cpu} ({first.machine.split(', ', 1)[1]}); torch {first.torch}; batch {BATCH}, eval, "
        f"{first.rounds} interleaved rounds of at least {first.min_time:g} s per variant; "
        f"load average (1/5/15 min): {loads}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=",".join(SPECS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--min-time", type=float)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    parser.add_argument("--render", nargs="+", metavar="FILE", help="print saved runs, measure nothing")
    args = parser.parse_args()
    if args.render:
        data = [json.loads(Path(f).read_text()) for f in args.render]
        results = [bench.from_dict(r) for d in data for r in d["results"]]
        print(table(results))
        print(conditions(results, data[0]["cpu"]))
        return
    specs = ("googlenet_tv", "mobilenet_v2") if args.quick and args.specs == ",".join(SPECS) else args.specs
    specs = specs.split(",") if isinstance(specs, str) else specs
    counts = [1] if args.quick and args.threads == "1,2" else [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (3 if args.quick else bench.ROUNDS)
    min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else bench.MIN_TIME)
    cpu, started, results = cpu_model(), time.perf_counter(), []
    for count in counts:
        for spec in specs:
            print(f"{spec}, {count} thread(s)", file=sys.stderr, flush=True)
            results.append(
                bench.run(
                    spec,
                    (BATCH,),
                    train_batch=0,
                    rounds=rounds,
                    compile=False,
                    min_time=min_time,
                    threads=count,
                    engines=bench.ENGINES,
                    progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
                )  # fmt: skip
            )
            if args.json:  # kept after every run: a long run interrupted keeps what it measured
                saved = {"cpu": cpu, "results": [bench.to_dict(r) for r in results]}
                Path(args.json).write_text(json.dumps(saved, indent=1))
    print(table(results))
    print(conditions(results, cpu))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
