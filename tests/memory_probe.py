"""Measuring what the generated modules hold, to hold incdsl.backends.pytorch.memory to (torch, CPU or CUDA).

- :func:`saved_by_module`: the bytes ``torch.autograd.graph.saved_tensors_hooks`` sees in one training
  forward, each storage once, parameters and buffers left out, each tensor attributed to the module
  that made it (a ``TorchDispatchMode`` notes, for every storage an op creates, the innermost module
  running at the time);
- :func:`peak_bytes`: the most bytes the CPU allocator had handed out at once while a function ran,
  from the profiler's allocation events (``profile_memory=True``), counted from zero at its start;
- :func:`training_peak`: the CPU peak of three AdamW steps as the trainer takes them.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

INPUT = "input"


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Makers(TorchDispatchMode):
    """Which module made each storage: the innermost module running when an op created it (an op
    whose output shares an input's storage, a view or an in-place op, makes nothing new)."""

    def __init__(self):
        super().__init__()
        self.running = [""]
        self.maker: dict[int, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _storage(t) not in given:
                self.maker[_storage(t)] = self.running[-1]
        return out


def saved_by_module(module: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> dict[str, int]:
    """Bytes saved for backward by one forward of ``module`` (in the mode it is in) on ``x``, keyed by
    the name (in ``named_modules()``) of the module that made each tensor: ``"input"`` for ``x``, ``""``
    for the top level. Under ``autocast``, bfloat16 autocast on ``x``'s device."""
    makers = _Makers()
    hooks = []
    for name, sub in module.named_modules():
        hooks.append(sub.register_forward_pre_hook(lambda m, a, name=name: makers.running.append(name)))
        hooks.append(sub.register_forward_hook(lambda m, a, o: makers.running.pop() and None))
    state = {_storage(t) for t in (*module.parameters(), *module.buffers())}
    saved: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _storage(t)
        if ptr not in state and ptr not in saved:
            saved[ptr] = (makers.maker.get(ptr, makers.running[-1]), t.untyped_storage().nbytes())
        return t

    try:
        with makers:
            makers.maker[_storage(x)] = INPUT
            with (
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                torch.autocast(x.device.type, torch.bfloat16, enabled=autocast),
            ):
                module(x)
    finally:
        for hook in hooks:
            hook.remove()
    by_module: dict[str, int] = {}
    for name, size in saved.values():
        by_module[name] = by_module.get(name, 0) + size
    return by_module


def peak_bytes(fn) -> int:
    """The most CPU bytes allocated at once while ``fn()`` ran, beyond what was allocated before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def training_peak(module: torch.nn.Module, batch: int, shape: list[int], classes: int) -> int:
    """The most CPU bytes alive at once over three AdamW steps on a random batch, as the trainer takes
    them (the last step's gradients alive through the next forward; aux heads' losses added): the
    weights, buffers and batch, and the peak the profiler sees on top of them."""
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(module.parameters())
    x, labels = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))

    def steps():
        for _ in range(3):
            out = module(x)
            logits, *aux = out if isinstance(out, tuple) else (out,)
            loss = F.cross_entropy(logits, labels) + sum(F.cross_entropy(a, labels) for a in aux)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    before = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers(), x, labels))
    return before + peak_bytes(steps)
