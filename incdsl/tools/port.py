"""Port a foreign state_dict into a spec's layout: ``incdsl port-weights SPEC FOREIGN -o OUT``.

Published checkpoints do not share one layout: the Caffe port of BN-Inception is flat
(``inception_3a_1x1.weight``, ``inception_3a_1x1_bn.running_var``), TF-slim conversions name things
their own way. What they share with the spec is the network: the same layers in the same order, each
owning tensors of known roles and shapes. So the foreign tensors are read in their file's order, each
given a role from its name and its module's (a module with running statistics is a norm: its
``weight`` is a scale; otherwise ``weight`` and ``bias`` are a convolution's or a linear layer's), and
matched one for one, in order, to the tensors of the spec's layers (:meth:`LayerKind.state`). The
match must be exact, role and shape, tensor for tensor; the first layer where it is not is named.

>>> import incdsl
>>> port = port_state(incdsl.load("bn_inception"), read_foreign("bninception.pth"))  # doctest: +SKIP
>>> port.pairs[0].ours, port.pairs[0].theirs  # doctest: +SKIP
('conv1.conv.weight', 'conv1_7x7_s2.weight')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from incdsl.errors import IncdslError
from incdsl.ir.tree import Network, layers
from incdsl.kinds.layers import BATCHES, BIAS, NORM_BIAS, NORM_WEIGHT, RUNNING_MEAN, RUNNING_VAR, WEIGHT

# A foreign tensor's role from its name in a module that has running statistics, or in one that has not.
NORM_ROLES = {"weight": NORM_WEIGHT, "bias": NORM_BIAS, "running_mean": RUNNING_MEAN,
              "running_var": RUNNING_VAR, "num_batches_tracked": BATCHES}  # fmt: skip
WEIGHT_ROLES = {"weight": WEIGHT, "bias": BIAS}
ROLE_WORDS = {WEIGHT: "weight", BIAS: "bias", NORM_WEIGHT: "norm scale", NORM_BIAS: "norm shift",
              RUNNING_MEAN: "running mean", RUNNING_VAR: "running variance",
              BATCHES: "batch count"}  # fmt: skip


class PortError(IncdslError):
    """A foreign state_dict cannot be read, or does not match the spec's layers."""


@dataclass(frozen=True)
class Entry:
    """One tensor: its key, role and shape (and, for the spec's, the layer that owns it)."""

    key: str
    role: str
    shape: tuple[int, ...]
    layer: str = ""


@dataclass(frozen=True)
class Pair:
    ours: str
    theirs: str
    role: str
    shape: tuple[int, ...]
    layer: str


@dataclass(frozen=True)
class Port:
    pairs: tuple[Pair, ...]
    state: dict  # the state_dict in the spec's layout, in its order
    aux: bool  # whether the aux heads' weights were ported too
    filled: tuple[str, ...]  # batch counts the foreign file lacks, set to 0


def read_foreign(path: str | os.PathLike) -> dict:
    """The tensors of a ``torch.save`` file (read with ``weights_only=True``: nothing in it runs) or a
    safetensors file; a checkpoint whose weights sit under ``state_dict`` or ``model`` is unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PortError(f"no weights file {path}")
    if path.stat().st_size == 0:
        raise PortError(f"{path} is empty: it holds no weights")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = natural_order(load_file(str(path)))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise PortError("reading .safetensors needs safetensors", hint="pip install safetensors") from None
    except Exception as exc:  # a damaged file, a pickle of code, not a checkpoint at all
        raise PortError(f"cannot read weights from {path}: {_first_line(exc)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        state = {}
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise PortError(f"{path} holds no tensors keyed by name (a state_dict)")
    for key, tensor in tensors.items():
        _check_values(path, key, tensor)
    return tensors


def _check_values(path: Path, key: str, tensor) -> None:
    """A tensor that can be written as a weight: dense, with values in memory. A meta tensor has a
    shape and no values; a sparse (or otherwise laid out) one is not what a module's state_dict loads."""
    import torch

    if tensor.is_meta:
        raise PortError(
            f"tensor {key} in {path} is on the meta device: it has a shape but no values",
            hint="save the weights from a model that holds them (not one built on the meta device)",
        )
    if tensor.layout != torch.strided:
        layout = str(tensor.layout).removeprefix("torch.")
        raise PortError(
            f"tensor {key} in {path} is {layout}, not a dense tensor: a module's weights are dense",
            hint="convert it with .to_dense() before saving",
        )


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


ROLE_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def natural_order(state: Mapping) -> dict:
    """A safetensors file keeps no order: its keys sorted as a network's are (numbers by value, a
    layer's own weights before its norm's, weights before biases). That is network order for
    positional layouts (``features.3.branch0.0.conv.weight``), not for every naming scheme; a match
    that fails names the first tensor out of place."""
    norms = {key.rpartition(".")[0] for key in state if key.endswith(".running_mean")}

    def sort_key(key: str):
        module, _, name = key.rpartition(".")
        *outer, last = module.split(".") if module else [""]
        parts = [(0, _natural(p)) for p in outer] + [(int(module in norms), _natural(last))]
        return [*parts, (ROLE_ORDER.get(name, 9), _natural(name))]

    return {key: state[key] for key in sorted(state, key=sort_key)}


def _natural(part: str) -> tuple:
    import re

    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", part) if t)


def foreign_entries(state: Mapping) -> list[Entry]:
    """The foreign tensors in their file's order, each with the role its name gives it."""
    modules: dict[str, set[str]] = {}
    for key in state:
        module, _, name = key.rpartition(".")
        modules.setdefault(module, set()).add(name)
    entries = []
    for key, tensor in state.items():
        module, _, name = key.rpartition(".")
        roles = NORM_ROLES if "running_mean" in modules[module] else WEIGHT_ROLES
        entries.append(Entry(key, roles.get(name, f"unknown ({name})"), tuple(tensor.shape)))
    return entries


def our_entries(net: Network, aux: bool = True) -> list[Entry]:
    """The spec's tensors in network order (the stages', then the aux heads'), with their layers."""
    nodes = [*(s.node for s in net.stages), *((a.node for a in net.auxes) if aux else ())]
    entries = []
    for node in nodes:
        for layer in layers(node):
            tensors = net.facts[layer].state
            entries += [Entry(layer.state_key(t), t.role, t.shape, layer.key) for t in tensors]
    return entries


def match(ours: list[Entry], theirs: list[Entry]) -> tuple[list[Pair], list[str]]:
    """Pairs of tensors, one for one in order; batch counts the foreign file lacks are listed to be
    filled with 0. A PortError names the first layer where counts, roles or shapes disagree."""
    filled = []
    if not any(e.role == BATCHES for e in theirs):
        filled = [e.key for e in ours if e.role == BATCHES]
        ours = [e for e in ours if e.role != BATCHES]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a.role != b.role or a.shape != b.shape:
            raise PortError(
                f"tensor {i + 1} does not match: the spec's {a.key} is a {ROLE_WORDS.get(a.role, a.role)} "
                f"of shape {list(a.shape)}, the file's {b.key} a {ROLE_WORDS.get(b.role, b.role)} of shape "
                f"{list(b.shape)}",
                hint=f"the first layer that differs is {a.layer}; the layers must be the same, in order",
            )
    if len(ours) != len(theirs):
        longer = ours if len(ours) > len(theirs) else theirs
        shorter, rest = ("the file" if longer is ours else "the spec"), longer[min(len(ours), len(theirs))]
        raise PortError(
            f"the spec has {len(ours)} tensors and the file {len(theirs)}: {shorter} ends before "
            f"{rest.layer or rest.key}",
        )
    return [Pair(a.key, b.key, a.role, a.shape, a.layer) for a, b in zip(ours, theirs)], filled


def port_state(net: Network, foreign: Mapping) -> Port:
    """The foreign tensors under the spec's keys; the aux heads' too when the file has them."""
    import torch

    theirs = foreign_entries(foreign)
    counted = any(e.role == BATCHES for e in theirs)
    main, full = our_entries(net, aux=False), our_entries(net, aux=True)
    aux = bool(net.auxes) and len([e for e in full if counted or e.role != BATCHES]) == len(theirs)
    ours = full if aux else main
    pairs, filled = match(ours, theirs)
    state = {pair.ours: foreign[pair.theirs] for pair in pairs}
    state.update({key: torch.tensor(0) for key in filled})
    return Port(tuple(pairs), {e.key: state[e.key] for e in ours}, aux, tuple(filled))


def layer_table(port: Port) -> list[tuple[str, str, str]]:
    """One line per spec layer: its key, the foreign tensors' modules it takes, and its shapes."""
    rows: dict[str, list[Pair]] = {}
    for pair in port.pairs:
        rows.setdefault(pair.layer, []).append(pair)
    table = []
    for layer, pairs in rows.items():
        modules = list(dict.fromkeys(p.theirs.rpartition(".")[0] or p.theirs for p in pairs))
        weight = next((p.shape for p in pairs if p.role == WEIGHT), pairs[0].shape)
        table.append((layer, ", ".join(modules), "x".join(map(str, weight))))
    return table
