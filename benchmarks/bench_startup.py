"""`incdsl stats` must answer quickly: it never imports torch.

Times `incdsl stats specs/googlenet.inc` against `python -c "import torch"`, interleaved in one run
so both see the same machine load, and prints the median of each and their ratio (target: <= 0.25).

    python benchmarks/bench_startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "incdsl stats googlenet": [sys.executable, "-m", "incdsl", "stats", str(ROOT / "specs/googlenet.inc")],
    "import torch": [sys.executable, "-c", "import torch"],
}
TARGET = 0.25


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache for both
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:28} median {value * 1000:7.0f} ms over {args.repeats} runs")
    ratio = medians["incdsl stats googlenet"] / medians["import torch"]
    verdict = "within" if ratio <= TARGET else "OVER"
    print(f"ratio stats / import torch: {ratio:.3f} ({verdict} the {TARGET} target)")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
