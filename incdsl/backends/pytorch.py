"""The PyTorch backend: a network's IR to one standalone, readable ``model.py``.

The file reads like torchvision's ``googlenet.py``: small helper classes, one class per block template
(template parameters become constructor arguments), submodules declared in reading order, and a
straight-line ``forward`` with the shape after each stage. Everything placed in the file is computed
here; ``templates/model.py.j2`` only lays it out. Names come from the spec through
:mod:`incdsl.naming`, which admits only identifiers; values are ints and floats. Nothing else from a
spec reaches the file.
"""

from __future__ import annotations

import re
import sys
import types
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import jinja2

from .. import ast
from ..errors import IncdslError
from ..ir import Network, bind_arguments
from ..layers import KINDS, FileDefaults, Layer, Sym, resolve
from ..naming import BranchPlan, Member, plan_block


class CompileError(IncdslError):
    """The spec is valid but cannot be written as PyTorch the way it is structured."""


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("model.py.j2")


def generate(net: Network) -> str:
    """The model file's source text, formatted."""
    helpers: set[str] = set()
    file = _file_defaults(net)
    blocks = [_block(net, name, helpers, file) for name in _templates_in_use(net)]
    network = _network(net, helpers, file)
    text = _template().render(
        network=network,
        blocks=blocks,
        helpers=helpers,
        bn_eps=repr(file.bn_eps),
        metadata=repr(_metadata(net)),
        ordered_dict=any("OrderedDict(" in line for b in [*blocks, network] for line in b["init"]),
        source_name=_safe_file_name(net.spec.path),
    )
    return _format(text)


def instantiate(source: str, **overrides):
    """Execute generated source as a fresh module and return ``build(**overrides)``."""
    module = load_source(source)
    return module.build(**overrides)


def load_source(source: str, name: str = "incdsl_generated") -> types.ModuleType:
    """Execute generated source as a module registered under ``name`` (for pickling and export)."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def _format(text: str) -> str:
    try:
        import black
    except ImportError:  # formatting is cosmetic; the text is valid Python either way
        return text
    return black.format_str(text, mode=black.Mode(line_length=100))


def _safe_file_name(path: str) -> str:
    return re.sub(r"[^\w.\-]", "_", path.replace("\\", "/").rsplit("/", 1)[-1]) or "spec"


def class_name(name: str) -> str:
    """``aux_classifier`` -> ``AuxClassifier``; ``InceptionA`` stays."""
    if "_" not in name and name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def _file_defaults(net: Network) -> FileDefaults:
    """The BatchNorm eps most conv layers use becomes the helper classes' default."""
    eps = Counter(
        data["layer"]["eps"]
        for _, data in net.graph.nodes(data=True)
        if data["kind"] == "conv" and data["layer"]["bn"]
    )
    return FileDefaults(bn_eps=eps.most_common(1)[0][0]) if eps else FileDefaults()


def _metadata(net: Network) -> dict:
    return {
        "network": net.name,
        "input": net.input.as_list(),
        "classes": net.classes,
        "aux": {a.name: a.weight for a in net.auxes},
    }


def _templates_in_use(net: Network) -> list[str]:
    """Templates the network calls, callees before callers, in first-use order."""
    order = list(dict.fromkeys(net.graph.graph.get("calls", {}).values()))
    return sorted(order, key=lambda n: -_nesting(net, n))


def _nesting(net: Network, name: str) -> int:
    calls = net.graph.graph.get("calls", {})
    return max((p.count(".") for p, t in calls.items() if t == name), default=0)


# walking a block -------------------------------------------------------------------------------


@dataclass
class _Flow:
    """What the forward pass holds at one point: a variable, its channels, whether it is flat."""

    var: str
    channels: tuple  # ints and parameter names, summed
    flat: bool = False

    def channels_src(self) -> str:
        const = sum(c for c in self.channels if isinstance(c, int))
        names = [str(c) for c in self.channels if not isinstance(c, int)]
        return " + ".join(names + ([str(const)] if const or not names else []))


@dataclass
class _Writer:
    """Emits ``__init__`` and ``forward`` lines for one block's members."""

    net: Network
    env: dict
    spatial: object  # callable(relative path) -> (height, width) of that layer's input
    helpers: set
    file: FileDefaults = field(default_factory=FileDefaults)
    comment: object = None  # callable(relative path) -> shape comment, for the network class
    symbolic: dict = field(default_factory=dict)  # path -> {argument: Sym}: constructor arguments
    init: list = field(default_factory=list)
    forward: list = field(default_factory=list)

    def members(self, members: tuple[Member, ...], flow: _Flow, scope: str = "") -> _Flow:
        for member in members:
            flow = self.member(member, flow, scope)
        return flow

    def member(self, member: Member, flow: _Flow, scope: str) -> _Flow:
        if member.group:
            return self.group(member.group, flow, scope)
        path = f"{scope}.{member.attr}" if scope else member.attr
        expr, out = self.module(member.row, flow, path)
        if expr is None:
            self.forward.append(f"# {member.row.kind}: left to the loss and to callers (logits out)")
            return flow
        self.init.append(f"self.{member.attr} = {expr}")
        self.apply(f"self.{member.attr}", member.row, flow, out, path)
        return out

    def apply(self, module: str, row: ast.Row, flow: _Flow, out: _Flow, path: str) -> None:
        if out.flat and not flow.flat and row.kind == "linear":
            self.forward.append(f"{flow.var} = torch.flatten({flow.var}, 1)")
        call = f"{module}({flow.var})"
        if row.kind in KINDS:
            call = KINDS[row.kind].call(self.layer(row), call)
        self.forward.append(f"{out.var} = {call}")
        if self.comment:
            self.forward.append(self.comment(path))

    def layer(self, row: ast.Row) -> Layer:
        return resolve(row, self.env, self.net.defaults)

    def module(self, row: ast.Row, flow: _Flow, path: str):
        """(constructor source, flow after it); (None, flow) for a kind with no module."""
        template = self.net.templates.get(row.kind)
        if template is not None:
            return self.call(template, row, flow, path)
        kind, layer = KINDS[row.kind], self.layer(row)
        if path in self.symbolic:
            layer = replace(layer, args={**layer.args, **self.symbolic[path]})
        if not kind.has_module:
            return None, flow
        self.helpers.update(kind.helpers(layer))
        channels = flow.channels_src()
        if row.kind == "linear" and not flow.flat:
            h, w = self.spatial(path)
            channels = channels if h * w == 1 else f"{channels} * {h} * {w}"
        out_channels = (layer["out"],) if "out" in layer.args else flow.channels
        flat = flow.flat or row.kind == "linear"
        return kind.module(layer, channels, self.file), _Flow(flow.var, out_channels, flat)

    def call(self, template: ast.Template, row: ast.Row, flow: _Flow, path: str):
        values = bind_arguments(template, row, self.env)
        args = [flow.channels_src()] + [_literal(values[p]) for p in template.params]
        if _uses_classes(self.net, template.name):
            args.append(_literal(self.env["classes"]))
        channels, flat = _template_output(self.net, template, values, flow)
        return f"{class_name(template.name)}({', '.join(args)})", _Flow(flow.var, channels, flat)

    def group(self, group: tuple[BranchPlan, ...], flow: _Flow, scope: str) -> _Flow:
        outputs: list[_Flow] = []
        taken: set[str] = set()
        for i, plan in enumerate(group, start=1):
            var = _unique(_branch_var(plan, i), taken)
            outputs.append(self.branch(plan, _Flow(flow.var, flow.channels, flow.flat), var, scope))
        out_var = flow.var
        self.forward.append(f"{out_var} = torch.cat([{', '.join(o.var for o in outputs)}], 1)")
        return _Flow(out_var, sum((o.channels for o in outputs), ()))

    def branch(self, plan: BranchPlan, flow: _Flow, var: str, scope: str) -> _Flow:
        if plan.attr is None:  # flattened: its layers are attributes of this block
            first, *rest = plan.members
            out = self.member(first, flow, scope)
            self._rename_last(flow.var, var)
            return self.members(tuple(rest), _Flow(var, out.channels, out.flat), scope)
        path = f"{scope}.{plan.attr}" if scope else plan.attr
        if len(plan.members) == 1 and plan.members[0].attr == "":
            row = plan.members[0].row
            expr, out = self.module(row, flow, path)
            self.init.append(f"self.{plan.attr} = {expr}")
            out = _Flow(var, out.channels, out.flat)
            self.apply(f"self.{plan.attr}", row, flow, out, path)
            return out
        return self.sequential(plan, flow, var, path)

    def sequential(self, plan: BranchPlan, flow: _Flow, var: str, path: str) -> _Flow:
        parts, named, current = [], False, flow
        for member in plan.members:
            if member.row.kind == "linear":
                raise CompileError(
                    "a linear layer cannot sit in a named multi-layer branch",
                    member.row.span,
                    "leave the branch unnamed and name its layers",
                )
            expr, current = self.module(member.row, current, f"{path}.{member.attr}")
            if expr is not None:
                parts.append((member.attr, expr))
                named = named or not member.attr.isdigit()
        if named:
            items = ", ".join(f"({name!r}, {expr})" for name, expr in parts)
            self.init.append(f"self.{plan.attr} = nn.Sequential(OrderedDict([{items}]))")
        else:
            self.init.append(f"self.{plan.attr} = nn.Sequential({', '.join(e for _, e in parts)})")
        self.forward.append(f"{var} = self.{plan.attr}({flow.var})")
        return _Flow(var, current.channels, current.flat)

    def _rename_last(self, old: str, new: str) -> None:
        """Make the first layer of a flattened branch write to the branch's own variable."""
        for i in range(len(self.forward) - 1, -1, -1):
            if self.forward[i].startswith(f"{old} = "):
                self.forward[i] = f"{new} = " + self.forward[i][len(old) + 3 :]
                return


def _branch_var(plan: BranchPlan, index: int) -> str:
    if plan.attr is not None:
        return plan.attr
    for member in plan.members:
        if member.row is not None and member.row.name is not None:
            return re.sub(r"_\d+[a-z]?$", "", member.attr)
    return f"branch{index}"


def _unique(name: str, taken: set[str]) -> str:
    base, i = name, 2
    while name in taken or name in ("x", "self"):
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _literal(value) -> str:
    return str(value) if isinstance(value, Sym) else repr(value)


def _template_output(net: Network, template: ast.Template, values: dict, flow: _Flow):
    """Channels a call produces, in the caller's terms (its input channels and its values)."""
    env = {**values, "classes": Sym("num_classes")}
    writer = _Writer(net, env, spatial=lambda path: (1, 1), helpers=set())
    out = writer.members(plan_block(template.body), _Flow("x", flow.channels, flow.flat))
    return out.channels, out.flat


def _uses_classes(net: Network, name: str, seen: frozenset = frozenset()) -> bool:
    template = net.templates[name]
    for row in _rows(template.body):
        if any(isinstance(a.value, ast.Ref) and a.value.name == "classes" for a in row.args):
            return True
        if row.kind in net.templates and row.kind not in seen:
            if _uses_classes(net, row.kind, seen | {name}):
                return True
    return False


def _rows(items):
    for item in items:
        if isinstance(item, ast.Branch):
            yield from _rows(item.items)
        else:
            yield item


# the two kinds of class -------------------------------------------------------------------------


def _block(net: Network, name: str, helpers: set, file: FileDefaults) -> dict:
    template = net.templates[name]
    env = {p: Sym(p) for p in template.params}
    floats = _float_params(template)
    signature = ["in_channels: int"] + [f"{p}: {'float' if p in floats else 'int'}" for p in template.params]
    if _uses_classes(net, name):
        env["classes"] = Sym("num_classes")
        signature.append("num_classes: int")
    writer = _Writer(
        net, env, spatial=lambda path: _instance_spatial(net, name, path), helpers=helpers, file=file
    )
    flow = writer.members(plan_block(template.body), _Flow("x", ("in_channels",)))
    writer.forward.append(f"return {flow.var}")
    return {
        "template": name,
        "class_name": class_name(name),
        "signature": ", ".join(signature),
        "init": writer.init,
        "forward": writer.forward,
    }


def _float_params(template: ast.Template) -> set[str]:
    """Parameters used as probabilities or other real-valued options rather than counts."""
    floats = set()
    for row in _rows(template.body):
        for arg in row.args:
            real = row.kind == "dropout" or (arg.key is not None and arg.key not in ("pad", "groups"))
            if real and isinstance(arg.value, ast.Ref):
                floats.add(arg.value.name)
    return floats


def _instance_spatial(net: Network, template: str, path: str) -> tuple[int, int]:
    """Height and width reaching ``path`` in every call of ``template``; they must agree."""
    calls = net.graph.graph.get("calls", {})
    sizes = {
        (s.height, s.width)
        for prefix, name in calls.items()
        if name == template
        for s in [net.graph.nodes[f"{prefix}.{path}"]["in_shape"]]
    }
    if len(sizes) != 1:
        raise CompileError(
            f"template '{template}' flattens inputs of different sizes ({sorted(sizes)}) at '{path}'",
            net.templates[template].span,
            "use adaptive_avgpool before the linear layer so every call sees the same size",
        )
    return sizes.pop()


def _network(net: Network, helpers: set, file: FileDefaults) -> dict:
    env = {} if net.classes is None else {"classes": Sym("num_classes")}
    dropouts = [s for s in net.stages if s.row.kind == "dropout"]
    signature = [] if net.classes is None else [f"num_classes: int = {net.classes}"]
    if net.auxes:
        signature.append("aux_logits: bool = True")
    symbolic = {}
    if len(dropouts) == 1:  # the classifier's dropout becomes a constructor argument
        signature.append(f"dropout: float = {_p(dropouts[0], net)!r}")
        symbolic[dropouts[0].attr] = {"p": Sym("dropout")}

    def comment(path: str) -> str:
        s = net.graph.nodes[_stage_output(net, path)]["shape"]
        return f"# N x {s.channels}" + ("" if s.flat else f" x {s.height} x {s.width}")

    def spatial(path: str) -> tuple[int, int]:
        s = net.graph.nodes[path]["in_shape"]
        return s.height, s.width

    writer = _Writer(
        net, env, spatial=spatial, helpers=helpers, file=file, comment=comment, symbolic=symbolic
    )
    s = net.input
    writer.forward.append(f"# N x {s.channels} x {s.height} x {s.width}")
    flow = _Flow("x", (net.input.channels,))
    aux_after = {a.after: a for a in net.auxes}
    for stage, member in zip(net.stages, plan_block(net.spec.rows)):
        flow = writer.member(member, flow, "")
        if stage.attr in aux_after:
            _aux(writer, net, aux_after[stage.attr], flow)
    _returns(writer, net, flow)
    name = class_name(net.name)
    return {
        "name": net.name,
        "class_name": name,
        "outputs": f"{name}Outputs",
        "input": f"{s.height}x{s.width}x{s.channels}",
        "signature": ", ".join(signature),
        "aux": [a.name for a in net.auxes],
        "init": writer.init,
        "forward": writer.forward,
    }


def _p(stage, net: Network) -> float:
    return resolve(stage.row, {"classes": net.classes}, net.defaults)["p"]


def _stage_output(net: Network, path: str) -> str:
    for stage in (*net.stages, *(a.stage for a in net.auxes)):
        if stage.attr == path.split(".", 1)[0]:
            return stage.output
    return path


def _aux(writer: _Writer, net: Network, aux, flow: _Flow) -> None:
    row = aux.stage.row
    if row.kind not in net.templates:
        raise CompileError("an aux head is written as a template call", row.span)
    expr, _ = writer.module(row, flow, aux.name)
    writer.init.append(f"self.{aux.name} = {expr} if aux_logits else None")
    writer.forward += [
        f"{aux.name}: Optional[Tensor] = None",
        f"if self.{aux.name} is not None and self.training:",
        f"    {aux.name} = self.{aux.name}({flow.var})",
    ]


def _returns(writer: _Writer, net: Network, flow: _Flow) -> None:
    if net.auxes:
        names = ", ".join(a.name for a in net.auxes)
        writer.forward += [
            "if self.training and self.aux_logits:",
            f"    return {class_name(net.name)}Outputs({flow.var}, {names})",
        ]
    writer.forward.append(f"return {flow.var}")
