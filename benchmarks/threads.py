"""How many threads should incdsl use by default? Times torch's default, 1 thread and every core, with
and without a background process that keeps one core busy (as another user's job on a shared machine).

    python benchmarks/threads.py [--rounds 5] [--spec googlenet_tv] [--train-spec mini_googlenet]

Two workloads: an eval forward of SPEC at batch 8 (the plain build), and a training step (forward,
backward, SGD) of TRAIN_SPEC at batch 64. Each round runs every thread setting in turn (the order
reversed every other round), first on the machine as it is, then with the busy process; a figure is the
median time per step over the rounds, with the lowest and highest round. The load average is printed
before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

BURN = "while True: pass"


def step_eval(spec: str):
    from incdsl import build_module, load

    net = load(spec)
    torch.manual_seed(0)
    model = build_module(net).eval()
    x = torch.randn(8, *net.input.as_list())

    def step():
        with torch.inference_mode():
            model(x)

    return step


def step_train(spec: str):
    from incdsl import build_module, load

    net = load(spec)
    torch.manual_seed(0)
    model = build_module(net).train()
    x = torch.randn(64, *net.input.as_list())
    labels = torch.randint(0, net.classes or 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def timed(step, seconds: float) -> float:
    """Median seconds per step over at least ``seconds`` (and at least 3 steps)."""
    times = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="googlenet_tv")
    parser.add_argument("--train-spec", default="mini_googlenet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="least time of one measurement")
    args = parser.parse_args()

    default, cores = torch.get_num_threads(), os.cpu_count() or 1
    settings = {"torch's default": default, "1 thread": 1, "all cores": cores}
    workloads = {f"{args.spec} eval, batch 8": step_eval(args.spec),
                 f"{args.train_spec} train step, batch 64": step_train(args.train_spec)}  # fmt: skip
    load_before = os.getloadavg()
    times = {(w, load, s): [] for w in workloads for load in ("as is", "one core busy") for s in settings}
    for round_ in range(args.rounds):
        for load in ("as is", "one core busy"):
            burner = subprocess.Popen([sys.executable, "-c", BURN]) if load != "as is" else None
            try:
                time.sleep(0.5 if burner else 0)
                names = list(settings) if round_ % 2 == 0 else list(reversed(settings))
                for workload, step in workloads.items():
                    for name in names:
                        torch.set_num_threads(settings[name])
                        step()  # warm-up at this thread count
                        times[workload, load, name].append(timed(step, args.seconds))
            finally:
                if burner:
                    burner.kill()
                    burner.wait()
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    torch.set_num_threads(default)

    print(
        f"{os.cpu_count()} CPUs; torch {torch.__version__}, default {default} threads; {args.rounds} rounds"
    )  # noqa: E501
    print(f"load average before {'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    print("\n| workload | machine | " + " | ".join(f"{n} ({t})" for n, t in settings.items()) + " |")
    print("|---|---|" + "---|" * len(settings))
    for workload in workloads:
        for load in ("as is", "one core busy"):
            cells = []
            for name in settings:
                ms = [1000 * t for t in times[workload, load, name]]
                cells.append(f"{statistics.median(ms):,.0f} ms ({min(ms):,.0f}-{max(ms):,.0f})")
            print(f"| {workload} | {load} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
