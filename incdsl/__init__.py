"""incdsl: Inception-style networks written as the GoogLeNet paper's table.

The pipeline, stage by stage (each a module with one entry function)::

    text --parser.parse--> ast.Spec --ir.build--> ir.Network --passes.run--> annotated Network
         --stats.compute--> Stats          (tables, JSON, budget)
         --backends.pytorch.generate--> model.py source
         --backends.graphviz.to_dot--> DOT text

>>> net = load("googlenet")                      # a shipped spec, or a path to a .inc file
>>> stats(net).macs
1582671872
>>> source = compile_source("googlenet")         # a standalone PyTorch file (imports torch only)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from . import ast, ir, parser, passes, report
from .errors import IncdslError, SpecNameError, did_you_mean
from .ir import Network
from .resources import prelude_path, shipped_specs

__all__ = [
    "IncdslError", "Network", "load", "parse", "stats", "compile_source", "build_module", "interpret",
    "to_dot",
]  # fmt: skip
__version__ = "0.1.0"


def read(target: str | Path) -> tuple[str, str]:
    """The text and display path of a spec given by path or by shipped name (``googlenet``)."""
    path = Path(target)
    if path.suffix == ".inc" or path.exists() or "/" in str(target):
        try:
            return path.read_text(), str(target)
        except OSError as exc:
            raise IncdslError(f"cannot read {target}: {exc.strerror or exc}") from None
    specs = shipped_specs()
    if str(target) not in specs:
        raise SpecNameError(
            f"no spec file or shipped spec named '{target}'",
            hint=did_you_mean(str(target), specs) or "shipped specs: " + ", ".join(specs),
        )
    return specs[str(target)].read_text(), str(target)


@cache
def prelude() -> tuple[ast.Template, ...]:
    path = prelude_path()
    return parser.parse(path.read_text(), "<prelude>").templates


def parse(text: str, path: str = "<spec>") -> ast.Spec:
    """Parse spec text (see :func:`incdsl.parser.parse`)."""
    return parser.parse(text, path)


def load(target: str | Path) -> Network:
    """Parse, build and annotate a spec given by path or shipped name; the IR with shapes and counts."""
    text, path = read(target)
    return from_text(text, path)


def from_text(text: str, path: str = "<spec>") -> Network:
    return passes.run(ir.build(parser.parse(text, path), prelude()))


def stats(net: Network | str | Path) -> report.Stats:
    """Per-stage params and multiply-adds (see :mod:`incdsl.report`)."""
    return report.compute(net if isinstance(net, Network) else load(net))


def compile_source(target: Network | str | Path, formatted: bool = True) -> str:
    """The standalone PyTorch source of a network (imports torch only, never incdsl)."""
    from .backends import pytorch

    return pytorch.generate(target if isinstance(target, Network) else load(target), formatted)


def build_module(target: Network | str | Path, **overrides):
    """The ``torch.nn.Module`` of a network, built by executing its generated source."""
    from .backends import pytorch

    return pytorch.instantiate(compile_source(target), **overrides)


def interpret(target: Network | str | Path, state=None):
    """An :class:`~incdsl.interpreter.Interpreter`: the network run from its IR with torch's
    functional ops, no code generated (``state``: a state_dict to run, else fresh weights)."""
    from .interpreter import Interpreter

    return Interpreter(target if isinstance(target, Network) else load(target), state)


def to_dot(target: Network | str | Path, level: str = "network") -> str:
    """Graphviz DOT text of a network (``level``: ``network`` or ``block``)."""
    from .backends import graphviz

    return graphviz.to_dot(target if isinstance(target, Network) else load(target), level)
