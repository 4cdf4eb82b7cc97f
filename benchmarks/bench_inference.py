"""The inference builds against ONNX Runtime: the plain build, the optimized build (``incdsl compile
SPEC --optimize``), the optimized build through its ``build(compile=True)`` (torch.compile with
freezing), and ONNX Runtime on the ONNX export of the plain build, all on the same weights and the same
input, in one process.

After a warm-up, the variants take turns round by round (A B C D, D C B A, ...), so that the drifts of a
shared machine hit them alike; each measurement runs whole batches for at least ``--min-time`` seconds
and takes their mean; the report gives the median over the rounds of each variant's milliseconds per
batch, and its ratio to ONNX Runtime taken within each round (median, lowest and highest), with the
load average before and after. A ratio of 1.2 means 1.2 times ONNX Runtime's time per batch.

    python benchmarks/bench_inference.py                                  # the four specs, 1 and 2 threads
    python benchmarks/bench_inference.py --specs googlenet_tv --threads 1 --rounds 5 --no-compile
    python benchmarks/bench_inference.py --json out.json                  # every figure kept

The ONNX file is written by torch.onnx's TorchScript exporter (seconds, where the dynamo exporter takes
minutes for Inception-v3); ONNX Runtime runs it with every graph optimization on, ``intra_op_num_threads``
set to the thread count and one inter-op thread.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import warnings

import torch

import incdsl
from incdsl.backends.pytorch.writer import load_source

SPECS = ("googlenet_tv", "inception_v3", "resnet50", "mobilenet_v2")


def onnx_session(model, example, threads: int):
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["x"], output_names=["y"], dynamo=False)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def variants(spec: str, batch: int, threads: int, compile: bool):
    """(name, callable) of each build, the input, and the seconds each compiled build took to compile."""
    net = incdsl.load(spec)
    torch.manual_seed(0)
    plain = incdsl.build_module(net).eval()
    module = load_source(incdsl.compile_source(net, optimize=True), f"incdsl_bench_{spec}")
    fast = module.build()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(batch, *net.input.as_list(), generator=torch.Generator().manual_seed(1))
    found = [("plain", plain), ("optimized", fast)]
    compile_seconds = None
    if compile:
        compiled = module.build(compile=True, state_dict=plain.state_dict())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        compile_seconds = time.perf_counter() - start
        found.append(("compiled", compiled))
    found.append(("onnxruntime", onnx_session(plain, x, threads)))
    with torch.inference_mode():
        expected = plain(x)
        for name, run in found[1:]:
            error = ((run(x) - expected).norm() / expected.norm()).item()
            if error > 1e-4:
                raise SystemExit(f"{spec}: {name} differs from the plain build (relative error {error:.1e})")
    return found, x, compile_seconds


def measure(found, x, rounds: int, min_time: float):
    """Milliseconds per batch of each variant, one list per variant, one entry per round."""
    times = {name: [] for name, _ in found}
    with torch.inference_mode():
        repeats = {}
        for name, run in found:  # warm-up, and how many batches make min_time
            start = time.perf_counter()
            run(x)
            repeats[name] = max(1, round(min_time / max(time.perf_counter() - start, 1e-6)))
        for index in range(rounds):
            for name, run in found if index % 2 == 0 else found[::-1]:
                start = time.perf_counter()
                for _ in range(repeats[name]):
                    run(x)
                times[name].append((time.perf_counter() - start) * 1000 / repeats[name])
    return times


def summary(times: dict) -> dict:
    base = times["onnxruntime"]
    out = {}
    for name, values in times.items():
        ratios = [value / b for value, b in zip(values, base)]
        out[name] = {
            "ms": statistics.median(values),
            "ratio": {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)},
            "rounds": values,
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", default=",".join(SPECS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile build")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    results = []
    print(f"torch {torch.__version__}, batch {args.batch}, {args.rounds} rounds of >= {args.min_time} s")
    print("| spec | threads | variant | ms per batch | / ONNX Runtime | compile s | load before / after |")
    print("|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for spec in args.specs.split(","):
            found, x, compile_seconds = variants(spec, args.batch, threads, not args.no_compile)
            before = os.getloadavg()
            times = measure(found, x, args.rounds, args.min_time)
            after = os.getloadavg()
            rows = summary(times)
            load = f"{before[0]:.1f} / {after[0]:.1f}"
            for name, row in rows.items():
                r = row["ratio"]
                seconds = f"{compile_seconds:.0f}" if name == "compiled" else "-"
                print(
                    f"| {spec} | {threads} | {name} | {row['ms']:.0f} | "
                    f"{r['median']:.2f}x ({r['low']:.2f}-{r['high']:.2f}) | {seconds} | {load} |",
                    flush=True,
                )
            results.append(
                {"spec": spec, "threads": threads, "batch": args.batch, "variants": rows,
                 "compile_seconds": compile_seconds, "load_average": {"before": before, "after": after}}
            )  # fmt: skip
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"torch": torch.__version__, "rounds": args.rounds, "results": results}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
