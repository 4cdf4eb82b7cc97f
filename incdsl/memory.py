"""How much memory a model's parameters need, and whether that fits where it is to be built.

``check`` and ``compile`` print the figure; :func:`incdsl.build_module` and ``incdsl train`` refuse a
model that cannot fit before a single parameter is allocated. Only parameters (and, for training, their
gradients, optimizer state and averaged copy) are counted: activations depend on the batch size.

>>> human_bytes(4 * 6_998_552)
'26.7 MiB'
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from incdsl.errors import IncdslError

FLOAT32_BYTES = 4
_CGROUP = Path("/sys/fs/cgroup")


class OutOfMemory(IncdslError):
    """A model's parameters cannot fit in the memory of the device it is to be built on."""


def human_bytes(count: int) -> str:
    """``27994208`` -> ``'26.7 MiB'`` (powers of 1024, as ``free -h`` and ``ls -lh`` print them)."""
    value, unit = float(count), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{count:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"


def available_ram() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable, capped by a cgroup limit
    (containers); None where neither is known."""
    candidates = [_meminfo_available(), _cgroup_room()]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            return max(0, int(limit) - int((_CGROUP / "memory.current").read_text()))
    return None


def available_on(device) -> int | None:
    """Free bytes on a torch device: RAM for ``cpu``, the GPU's free memory for ``cuda``; None for
    devices that hold no data (``meta``) or whose free memory torch does not report."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cpu":
        return available_ram()
    if kind == "cuda":
        import torch

        with contextlib.suppress(RuntimeError):
            return torch.cuda.mem_get_info(device)[0]
    return None


def require(needed: int, device, what: str) -> None:
    """An OutOfMemory error when ``needed`` bytes cannot fit on ``device``; nothing otherwise.
    ``what`` ends in a verb: ``"the model's parameters need"``."""
    free = available_on(device)
    if free is not None and needed > free:
        raise OutOfMemory(
            f"{what} {human_bytes(needed)}, more than the {human_bytes(free)} available on {device}",
            hint="make the layers narrower (fewer channels), or use a machine with more memory",
        )


def module_bytes(build) -> int:
    """Bytes of the parameters and buffers of the module ``build()`` returns, measured on the meta
    device: nothing is allocated, whatever the model's size."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def default_device():
    """Where torch creates tensors when not told otherwise (``cpu`` unless the caller changed it)."""
    import torch

    get = getattr(torch, "get_default_device", None)  # torch >= 2.3
    return get() if get else torch.empty(()).device
