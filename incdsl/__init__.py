"""incdsl: convolutional networks written as their papers' tables, checked, compiled, drawn, trained.

The pipeline, stage by stage (each a module with one entry function; the package's folders follow it)::

    text --syntax.parser.parse--> ast.Spec --ir.tree.build--> Network --passes.annotate.run--> annotated
         --analysis.report.compute--> Stats          (tables, JSON, budget)
         --backends.pytorch.writer.generate--> model.py source
         --backends.graphviz.to_dot--> DOT text

>>> net = load("googlenet")                      # a shipped spec, or a path to a .inc file
>>> stats(net).macs
1582671872
>>> source = compile_source("googlenet")         # a standalone PyTorch file (imports torch only)
"""

from __future__ import annotations

from pathlib import Path

from incdsl.analysis import report
from incdsl.errors import IncdslError, SpecNameError, did_you_mean
from incdsl.files import read_utf8
from incdsl.ir import tree as ir
from incdsl.ir.tree import Network
from incdsl.passes import annotate as passes
from incdsl.resources import shipped_specs
from incdsl.syntax import ast, parser

__all__ = [
    "IncdslError", "Network", "load", "parse", "network", "stats", "compile_source", "build_module",
    "interpret", "to_dot",
]  # fmt: skip
__version__ = "0.1.0"


def read(target: str | Path) -> tuple[str, str]:
    """The text and display path of a spec given by path or by shipped name (``googlenet``).

    The file must be UTF-8 (a leading byte-order mark is dropped) and at most
    :data:`incdsl.syntax.parser.MAX_SPEC_BYTES` long; anything else is an error naming the file.
    """
    return read_spec_file(locate(target), str(target)), str(target)


def locate(target: str | Path) -> Path:
    """The file of a spec given by path or by shipped name; a SpecNameError for an unknown name."""
    if not str(target):
        raise SpecNameError("the spec is named by an empty string", hint="give a .inc file or a shipped name")
    path = Path(target)
    if path.suffix == ".inc" or path.exists() or "/" in str(target):
        return path
    specs = shipped_specs()
    if str(target) not in specs:
        raise SpecNameError(
            f"no spec file or shipped spec named '{target}'",
            hint=did_you_mean(str(target), specs) or "shipped specs: " + ", ".join(specs),
        )
    return specs[str(target)]


def read_spec_file(path: Path, shown: str) -> str:
    """The text of a spec file, read no further than the size limit, decoded as UTF-8."""
    return read_utf8(path, parser.MAX_SPEC_BYTES, "a spec", shown)


prelude = parser.prelude  # the built-in templates, parsed once


def parse(text: str, path: str = "<spec>") -> ast.Spec:
    """Parse spec text (see :func:`incdsl.syntax.parser.parse`)."""
    return parser.parse(text, path)


def load(target: str | Path) -> Network:
    """Parse, build and annotate a spec given by path or shipped name; the IR with shapes and counts."""
    text, path = read(target)
    return from_text(text, path)


def from_text(text: str, path: str = "<spec>", **header) -> Network:
    """The annotated IR of spec text; ``header``: values of its header replaced (see :func:`network`)."""
    return network(parser.parse(text, path), **header)


def network(spec: ast.Spec, **header) -> Network:
    """The annotated IR of a parsed spec, built from its AST (no text in between); ``header``: values
    of its header replaced (``classes=10``, ``input=ast.Size((64, 64, 3))``, ``budget``), and ``rows``
    for a part of the network, as :func:`incdsl.ir.tree.build` takes them."""
    return passes.run(ir.build(spec, **header))


def stats(net: Network | str | Path) -> report.Stats:
    """Per-stage params and multiply-adds (see :mod:`incdsl.analysis.report`)."""
    return report.compute(net if isinstance(net, Network) else load(net))


def compile_source(
    target: Network | str | Path, formatted: bool = True, optimize: bool = False, compiled: bool = False
) -> str:
    """The standalone PyTorch source of a network (imports torch only, never incdsl). ``optimize``:
    the inference build (BatchNorm folded, sibling 1x1 convolutions fused, channels_last), which loads
    the plain build's state_dict; ``compiled``: its ``build()`` applies ``torch.compile``."""
    from incdsl.backends.pytorch import writer as pytorch

    net = target if isinstance(target, Network) else load(target)
    return pytorch.generate(net, formatted, optimize, compiled)


def build_module(target: Network | str | Path, optimize: bool = False, **overrides):
    """The ``torch.nn.Module`` of a network, built by executing its generated source (the inference
    build with ``optimize``).

    A model whose parameters cannot fit in the free memory of torch's default device is refused
    (:class:`incdsl.memory.OutOfMemory`) before anything is allocated.
    """
    from incdsl import memory
    from incdsl.backends.pytorch import writer as pytorch

    source = compile_source(target, formatted=False, optimize=optimize)
    device = memory.default_device()
    needed = memory.module_bytes(lambda: pytorch.instantiate(source, **overrides))
    memory.require(needed, device, "the model's parameters and buffers need")
    return pytorch.instantiate(source, **overrides)


def interpret(target: Network | str | Path, state=None):
    """An :class:`~incdsl.backends.pytorch.interpreter.Interpreter`: the network run from its IR with torch's
    functional ops, no code generated (``state``: a state_dict to run, else fresh weights)."""
    from incdsl.backends.pytorch.interpreter import Interpreter

    return Interpreter(target if isinstance(target, Network) else load(target), state)


def to_dot(target: Network | str | Path, level: str = "network") -> str:
    """Graphviz DOT text of a network (``level``: ``network`` or ``block``)."""
    from incdsl.backends import graphviz

    return graphviz.to_dot(target if isinstance(target, Network) else load(target), level)
