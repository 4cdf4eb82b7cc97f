"""How many threads incdsl's commands compute with: ``--threads N`` on ``train``, ``eval`` and ``bench``
(and the engines' sessions in ``bench``), or a default that leaves busy cores alone.

torch's own default is one thread per physical core, whatever else runs. Every parallel operation
then waits for its slowest thread, and on a core that another process holds that thread runs only
when the scheduler gives it a slice: on a shared machine a step can take several times as long as
with fewer threads (the README's "Performance" has the figures, from ``benchmarks/threads.py``). So
the default is the cores that are not busy: the CPUs this process may run on, less the 1-minute
load average (rounded), at least 1 and at most torch's default. ``OMP_NUM_THREADS``, when set, is the
user's choice and is kept. ``--threads 0`` asks for the default explicitly.

>>> choose(3, cpus=8, load=0.0, cap=8)
(3, 'set by --threads')
>>> choose(0, cpus=2, load=1.2, cap=2)
(1, "incdsl's default for 2 CPUs at load average 1.2; --threads N sets it")
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

MAX_THREADS = 1024
HELP = (
    "threads to compute with (default 0: the CPUs not busy with other work, from the load average; "
    "OMP_NUM_THREADS if set)"
)


def parse(text: str) -> int:
    """``--threads``: 0 (the default) to 1024, read as every number option is (incdsl.numbers)."""
    from incdsl.numbers import NumberError, read_int

    try:
        return read_int(text, 0, MAX_THREADS)
    except NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_option(parser: argparse.ArgumentParser, type=parse) -> None:
    """The one ``--threads`` option of train, eval and bench (``type``: the trainer's checks its range
    as its other options', from the same bounds)."""
    parser.add_argument("--threads", type=type, metavar="N", help=HELP)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose(
    requested: int | None, cpus: int | None = None, load: float | None = None, cap: int | None = None
) -> tuple[int, str]:
    """The thread count for ``requested`` (None or 0: the default) and why, as a few words.
    ``cpus``, ``load`` and ``cap`` (torch's default) are the machine's unless given."""
    if requested:
        return requested, "set by --threads"
    if os.environ.get("OMP_NUM_THREADS") and cap is None:
        import torch

        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = usable_cpus() if cpus is None else cpus
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    if cap is None:
        import torch

        cap = torch.get_num_threads()
    count = max(1, min(cap, cpus - round(load)))
    return count, f"incdsl's default for {cpus} CPUs at load average {load:.1f}; --threads N sets it"


@contextlib.contextmanager
def using(requested: int | None) -> Iterator[tuple[int, str]]:
    """torch computes with :func:`choose`'s count inside the block (yielded with the reason); the
    previous count is restored after it."""
    import torch

    before = torch.get_num_threads()
    count, why = choose(requested)
    torch.set_num_threads(count)
    try:
        yield count, why
    finally:
        torch.set_num_threads(before)


def describe(count: int, why: str) -> str:
    """``threads: 1 (incdsl's default: ...)``, the line the trainer starts with."""
    return f"threads: {count} ({why})"
