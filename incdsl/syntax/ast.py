"""The typed syntax tree of a spec: frozen dataclasses, each node keeping its source span.

Values in rows stay as written: an ``int``, a ``float``, a :class:`Size` (``7x7/2``) or a :class:`Ref`
(a bare name, resolved later to a template parameter, ``classes`` or a flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from incdsl.errors import Span


@dataclass(frozen=True)
class Size:
    """``HxW`` or ``HxWxC``, with an optional ``/stride``. Inside a template a size may name parameters
    (``kxk``, ``3x3/s``); once bound, its dimensions and stride are numbers or symbolic values."""

    dims: tuple
    stride: object = None

    def __str__(self) -> str:
        text = "x".join(map(str, self.dims))
        return f"{text}/{self.stride}" if self.stride is not None else text


@dataclass(frozen=True)
class Ref:
    """A bare name used as a value."""

    name: str


@dataclass(frozen=True)
class Binary:
    """``left OP right``: arithmetic in an argument (``w*4``, ``c//r``, ``(k-1)//2``); ``SIZE/s`` is a
    size with the stride ``s``."""

    op: str  # + - * / // %
    left: Value
    right: Value


@dataclass(frozen=True)
class Apply:
    """``fn(arg, ...)``: one of the spec language's functions (``make_divisible(c*t, 8)``, ``max``)."""

    fn: str
    args: tuple[Value, ...]


Value = int | float | Size | Ref | Binary | Apply


def refs(value: Value) -> set[str]:
    """The names a value written in a spec mentions (``w * 4`` mentions ``w``)."""
    if isinstance(value, Ref):
        return {value.name}
    if isinstance(value, Binary):
        return refs(value.left) | refs(value.right)
    if isinstance(value, Apply):
        return set().union(*map(refs, value.args))
    return set()


@dataclass(frozen=True)
class Arg:
    """One argument of a row: positional when ``key`` is None, else ``key=value``."""

    value: Value
    span: Span = field(compare=False)
    key: str | None = None


@dataclass(frozen=True)
class Name:
    """A row, branch or stage name as written: an identifier, or a stage label like ``3a``."""

    text: str
    span: Span = field(compare=False)
    quoted: bool = False  # "block1-0": a key of a sequential group's position, not an identifier

    @property
    def is_label(self) -> bool:
        return not self.quoted and self.text[:1].isdigit()


@dataclass(frozen=True)
class Row:
    """``[name:] [Nx] kind args...``: a layer, or a call of a template. A top-level row written inside
    ``sequential NAME { ... }`` has that group's name as ``sequence``; a group nested there is a row of
    kind ``sequential`` holding it (``group``): one position, an nn.Sequential of its own."""

    kind: str
    args: tuple[Arg, ...]
    span: Span = field(compare=False)
    name: Name | None = None
    repeat: int = 1
    sequence: Name | None = None
    group: Sequential | None = None  # a sequential group nested in a top-level one: one position


@dataclass(frozen=True)
class Branch:
    """One arm of a parallel group; consecutive branches are concatenated along channels."""

    items: tuple[Item, ...]
    span: Span = field(compare=False)
    name: Name | None = None


@dataclass(frozen=True)
class Residual:
    """``residual [scale=S] [relu|norelu] { ... }``: ``act(shortcut(x) + scale * body(x))``. The body's
    items are those of the enclosing block; a ``shortcut`` item among them projects ``x``."""

    items: tuple[Item, ...]
    args: tuple[Arg, ...]
    span: Span = field(compare=False)
    merge: str = "add"  # the merge kind: add (residual), mul (gate: x * body(x))


@dataclass(frozen=True)
class Split:
    """``split { branches }``: the input's channels in equal parts, one per branch, concatenated."""

    items: tuple[Item, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Sequential:
    """``sequential NAME { rows }``: an ``nn.Sequential`` whose positions are the rows, in order. At the
    top level its rows are the network's stages (see :attr:`Row.sequence`); inside a template it is
    one attribute, run as one module."""

    name: Name
    items: tuple[Item, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Shortcut:
    """``shortcut [NAME]: row`` or ``shortcut [NAME] { rows }``: a residual's projection of its input."""

    items: tuple[Row, ...]
    span: Span = field(compare=False)
    name: Name | None = None
    args: tuple[Arg, ...] = ()  # when=FLAG: the projection only where the flag is 1


Item = Row | Branch | Residual | Shortcut | Sequential | Split


@dataclass(frozen=True)
class Template:
    """``template NAME(param "title", ...) { body }``: a titled parameter is a column of the stats
    table (``n1x1 "#1x1"``)."""

    name: str
    params: tuple[str, ...]
    body: tuple[Item, ...]
    span: Span = field(compare=False)
    titles: tuple[str | None, ...] = ()
    sequential: bool = False  # an nn.Sequential: its rows are positions 0, 1, 2, ...
    comment: str = field(default="", compare=False)  # the '#' lines right above it, without the '#'
    comment_span: Span | None = field(default=None, compare=False)  # where they are

    def title(self, param: str) -> str | None:
        titles = dict(zip(self.params, self.titles))
        return titles.get(param)


@dataclass(frozen=True)
class Defaults:
    """``defaults kind: options``: options every row of that kind starts from."""

    kind: str
    args: tuple[Arg, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Aux:
    """``aux NAME after STAGE weight=W: row``: an auxiliary classifier fed by a stage's output."""

    name: Name
    after: Name
    args: tuple[Arg, ...]
    head: Row
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Spec:
    """A whole spec file."""

    path: str
    source: str
    network: str | None
    input: Size | None
    classes: int | None
    budget: int | None
    defaults: tuple[Defaults, ...]
    templates: tuple[Template, ...]
    rows: tuple[Row, ...]
    auxes: tuple[Aux, ...]
    header_spans: dict = field(default_factory=dict, compare=False)
