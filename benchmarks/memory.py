"""The activation-memory estimate against measurement, for the README's "Memory" table (CPU).

    PYTHONPATH=. python benchmarks/memory.py [SPEC:BATCH ...]

For each spec and batch: the bytes saved for backward as ``saved_tensors_hooks`` sees them (fp32 and
bf16 autocast; every layer compared, the worst layer's ratio shown), the inference peak of live
activations as the CPU allocator reports it (profiler memory events), and a training step's peak
(three AdamW steps, as the trainer takes them). Ratios are estimate / measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import memory_probe as probe  # noqa: E402
from memory_probe import peak_bytes, saved_by_module  # noqa: E402

import incdsl  # noqa: E402
from incdsl.backends.pytorch.memory import Setting, estimate  # noqa: E402
from incdsl.ir.tree import Layer  # noqa: E402
from incdsl.memory import human_bytes  # noqa: E402

CASES = ["mini_googlenet:16", "googlenet:4", "googlenet_tv:8", "bn_inception:4", "inception_v3:4",
         "inception_v4:2", "inception_resnet_v2:2"]  # fmt: skip


def _prefix(name: str, keys) -> str | None:
    parts = name.split(".")
    return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in keys), None)


def saved(net, batch: int, dtype: str) -> tuple[int, int, float]:
    """Estimated and measured totals, and the worst per-layer ratio (layers saving 1 KiB or more)."""
    torch.manual_seed(0)
    module = incdsl.build_module(net).train()
    measured = saved_by_module(module, torch.randn(batch, *net.input.as_list()), dtype == "bf16")
    est = estimate(net, Setting(batch, training=True, dtype=dtype))
    keys = {n.key for n in net.walk() if isinstance(n, Layer)} | {"input"}
    by_layer: dict[str, int] = {}
    for name, size in measured.items():
        key = _prefix(name, keys)
        if key:
            by_layer[key] = by_layer.get(key, 0) + size
    ratios = [layer.saved / by_layer[layer.key] for layer in est.layers if by_layer.get(layer.key, 0) >= 1024]
    worst = max(ratios, key=lambda r: abs(r - 1), default=1.0)
    return est.saved, sum(measured.values()), worst


def live(net, batch: int) -> tuple[int, int]:
    module = incdsl.build_module(net).eval()
    x = torch.randn(batch, *net.input.as_list())
    with torch.no_grad():
        module(x)
        measured = peak_bytes(lambda: module(x)) + x.numel() * 4
    return estimate(net, Setting(batch)).live, measured


def training_peak(net, batch: int) -> tuple[int, int]:
    module = incdsl.build_module(net).train()
    measured = probe.training_peak(module, batch, net.input.as_list(), net.classes)
    return estimate(net, Setting(batch, training=True)).peak, measured


def main(cases: list[str]) -> None:
    print(f"torch {torch.__version__}, CPU ({torch.backends.cpu.get_cpu_capability()})\n")
    print("| spec | batch | saved fp32 (est / measured) | worst layer | saved bf16 | worst layer "
          "| live peak, inference | training step peak |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        name, batch = case.split(":")
        net, batch = incdsl.load(name), int(batch)
        cells = [name, str(batch)]
        for dtype in ("fp32", "bf16"):
            est, measured, worst = saved(net, batch, dtype)
            cells += [f"{human_bytes(est)} / {human_bytes(measured)} ({est / measured:.3f})", f"{worst:.3f}"]
        for est, measured in (live(net, batch), training_peak(net, batch)):
            cells.append(f"{human_bytes(est)} / {human_bytes(measured)} ({est / measured:.3f})")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or CASES)
