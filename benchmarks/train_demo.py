"""The digits demo: ``incdsl train mini_googlenet --data digits --out RUN_DIR`` with the defaults.

Runs the command as a user would (a fresh process, the fast recipe's defaults), then prints the wall
time and the validation accuracy of the last epoch. Done when top-1 >= 0.97 within 5 minutes on a
2-core CPU. The digits are written to the cache first (untimed: a one-off, about a second).

    python benchmarks/train_demo.py                 # RUN_DIR defaults to a temporary folder
    python benchmarks/train_demo.py --out runs/digits --json demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from incdsl.train.data import digits_folder
from incdsl.train.logs import read_metrics

TARGET_TOP1, TARGET_SECONDS = 0.97, 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="mini_googlenet")
    parser.add_argument("--out", type=Path, help="run directory (must not hold a run yet)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("extra", nargs="*", help="more options for incdsl train, after --")
    args = parser.parse_args(argv)
    digits_folder()
    out = args.out or Path(tempfile.mkdtemp(prefix="incdsl-demo-")) / "digits"
    command = [sys.executable, "-m", "incdsl", "train", args.target, "--data", "digits", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run([*command, *args.extra], check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    records = read_metrics(out)
    last = records[-1]
    passed = last["val_top1"] >= TARGET_TOP1 and seconds <= TARGET_SECONDS
    print(
        f"{args.target} on digits: val_top1 {last['val_top1']:.4f} after {last['epoch']} epochs "
        f"in {seconds:.0f} s ({'meets' if passed else 'MISSES'} >= {TARGET_TOP1} within {TARGET_SECONDS} s)"
    )
    if args.json:
        result = {
            "target": args.target,
            "seconds": seconds,
            "epochs": last["epoch"],
            "last": last,
            "passed": passed,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
