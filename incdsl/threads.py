"""How many threads incdsl's commands compute with: ``--threads N`` on ``train``, ``eval`` and ``bench``
(and the engines' sessions in ``bench``), or a default that leaves busy cores alone.

torch's own default is one thread per physical core, whatever else runs. Every parallel operation
then waits for its slowest thread, and on a core that another process holds that thread runs only
when the scheduler gives it a slice: on a shared machine a step can take several times as long as
with fewer threads (the README's "Performance" has the figures, from ``benchmarks/threads.py``). So
the default is the cores that are not busy: the CPUs this process may run on, less those busy with
other work now (rounded), at least 1 and at most torch's default. "Now" is a short sample of
``/proc/stat`` (:func:`busy_cpus`): the 1-minute load average, used where there is no /proc/stat,
still counts a job that ended seconds ago, and chose one thread on an idle machine after one.
``OMP_NUM_THREADS``, when set, is the user's choice and is kept. ``--threads 0`` asks for the default
explicitly.

>>> choose(3, cpus=8, busy=0.0, cap=8)
(3, 'set by --threads')
>>> choose(0, cpus=2, busy=1.2, cap=2)
(1, "incdsl's default for 2 CPUs, 1.2 of them busy; --threads N sets it")
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

MAX_THREADS = 1024
SAMPLE_SECONDS = 0.1  # how long busy_cpus watches /proc/stat (10 ticks per CPU at 100 Hz)
HELP = (
    "threads to compute with (default 0: the CPUs not busy with other work, sampled at the start; "
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
    return len(_affinity())


def busy_cpus(interval: float = SAMPLE_SECONDS) -> tuple[float, str] | None:
    """How many of the CPUs this process may run on were busy over the next ``interval`` seconds
    (this process sleeps meanwhile, so the work is others'), from /proc/stat's per-CPU times (idle and
    iowait count as free; time stolen by a hypervisor as busy); with where the figure comes from.
    Where /proc/stat cannot be read, the 1-minute load average instead (None without one either)."""
    cpus = _affinity()
    try:
        before = _times(cpus)
        time.sleep(interval)
        after = _times(cpus)
    except (OSError, ValueError, IndexError):
        before = after = None
    if before and after and after[0] > before[0]:
        total, idle = after[0] - before[0], after[1] - before[1]
        return (1 - idle / total) * len(cpus), "busy"
    if hasattr(os, "getloadavg"):
        return os.getloadavg()[0], "load average"
    return None


def _affinity() -> set[int]:
    """The CPUs this process may run on, by number."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _times(cpus: set[int], path: str = "/proc/stat") -> tuple[int, int] | None:
    """Total and free (idle + iowait) clock ticks of ``cpus`` so far; None if /proc/stat lists none."""
    total = free = 0
    seen = False
    with open(path, encoding="ascii") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                free += ticks[3] + ticks[4]
                seen = True
    return (total, free) if seen else None


def choose(
    requested: int | None, cpus: int | None = None, busy: float | None = None, cap: int | None = None
) -> tuple[int, str]:
    """The thread count for ``requested`` (None or 0: the default) and why, as a few words.
    ``cpus``, ``busy`` (how many of them other work holds) and ``cap`` (torch's default) are the
    machine's unless given."""
    if requested:
        return requested, "set by --threads"
    if os.environ.get("OMP_NUM_THREADS") and cap is None:
        import torch

        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = usable_cpus() if cpus is None else cpus
    source = "busy"
    if busy is None:
        busy, source = busy_cpus() or (0.0, "busy")
    if cap is None:
        import torch

        cap = torch.get_num_threads()
    count = max(1, min(cap, cpus - round(busy)))
    measured = f"{busy:.1f} of them busy" if source == "busy" else f"load average {busy:.1f}"
    return count, f"incdsl's default for {cpus} CPUs, {measured}; --threads N sets it"


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
