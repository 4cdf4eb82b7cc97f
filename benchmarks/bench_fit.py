"""`incdsl fit --per-stage` measures each trial by building the IR from the AST, each distinct trial once.

Times `incdsl fit googlenet --budget 1.5G --per-stage` in this process and prints how many times it
built the IR (``incdsl.ir.tree.build``) and parsed spec text
(``incdsl.syntax.parser.parse``), counted by wrapping
both, with its wall and CPU seconds. It uses only the command line's entry point, so the same file
measures any checkout: ``PYTHONPATH=/path/to/checkout python bench_fit.py``. Run two checkouts one
after the other, at one thread (``OMP_NUM_THREADS=1``), and compare the CPU seconds, which the
machine's load changes less than the wall seconds.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit.py [--repeats 1] [SPEC BUDGET]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time


def counted(module, name: str, counts: dict[str, int]) -> None:
    """Wrap ``module.name`` so that each call adds one to ``counts[name]``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="googlenet")
    parser.add_argument("budget", nargs="?", default="1.5G")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import incdsl
    from incdsl.ir import tree as ir
    from incdsl.syntax import parser as spec_parser
    from incdsl.tools import cli

    counts = {"build": 0, "parse": 0}
    counted(ir, "build", counts)
    counted(spec_parser, "parse", counts)
    command = ["fit", args.spec, "--budget", args.budget, "--per-stage"]
    incdsl.load(args.spec)  # the parse tables and the shipped prelude, as any command finds them
    walls, cpus = [], []
    for _ in range(args.repeats):
        counts.update(build=0, parse=0)
        wall, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(command)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if code != 0:
            raise SystemExit(f"incdsl {' '.join(command)} exited {code}")
    fitted = next(line for line in out.getvalue().splitlines() if "Multiply-adds:" in line)
    print(f"incdsl {' '.join(command)} ({incdsl.__file__})")
    print(f"  {fitted.lstrip('# ')}")
    print(f"  IR builds: {counts['build']}, parses: {counts['parse']}")
    print(f"  seconds: {statistics.median(walls):.2f} wall, {statistics.median(cpus):.2f} CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
