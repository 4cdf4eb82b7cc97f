"""The optimizing build's passes: plain functions over the IR that decide what the inference module
does differently from the plain one. Each reads the IR and the decisions so far and adds its own; the
PyTorch backend (:class:`~incdsl.backends.pytorch.writer.OptimizedWriter`) spells them. The IR itself is not
changed, so one Network compiles to both builds.

- :func:`fold_batchnorm`: a convolution followed by BatchNorm becomes one convolution whose weight and
  bias fold the BatchNorm in, computed when weights are loaded (the file holds no folded numbers, and
  the plain build's state_dict loads unchanged): a conv row with ``bn``, and a bare conv row followed
  by a ``batchnorm`` row (torchvision's layout), whose BatchNorm module then passes its input on;
- :func:`fold_activations`: a ReLU or ReLU6 row after such a folded batchnorm row is applied by the
  convolution too (conv, BN, activation rows as one convolution);
- :func:`fold_residuals`: a residual's add (scale 1) and its ReLU are applied by the body's last
  convolution, a folded one (oneDNN's convolution with a binary add post-op), which then reads the
  shortcut: ResNet's blocks end in one call instead of a convolution, an add and a ReLU;
- :func:`fuse_siblings`: 1x1 convolutions that read the same input, at the heads of a group's
  branches (an inception module's #1x1, #3x3 reduce and #5x5 reduce), run as one convolution whose
  output is split;
- :func:`separable_max_pools`: max pooling over 3x3 windows with stride 1 and padding 1 (an inception
  module's pool branch) runs as maxima of neighbours, along the rows then the columns, without the
  int64 indices torch's max pooling computes and the module drops;
- :func:`use_channels_last`: weights and activations in channels_last (NHWC) memory format, which
  oneDNN's CPU convolutions (and cuDNN's tensor cores) run without reordering.
- :func:`use_onednn`: the folded convolutions run, eagerly on the CPU, as oneDNN's convolution with
  the ReLU fused in one call (where torch would run a 1x1 convolution at one thread without oneDNN).

>>> import incdsl
>>> net = incdsl.load("googlenet_tv")
>>> plan = optimize(net)  # the plan is keyed by this network's nodes
>>> [(g.name, [b.container for b in g.branches]) for g in plan.groups(net.blocks[0])]
[('fused', ['branch1', 'branch2', 'branch3'])]
>>> len(plan.folded), plan.channels_last
(66, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from incdsl.ir.symbols import Scope
from incdsl.ir.tree import Branch, Fork, Layer, Network, Seq, walk
from incdsl.kinds.layers import Activation, Add, BatchNorm, Conv, MaxPool


@dataclass(frozen=True, eq=False)
class Group:
    """Branches of one Fork whose first layers, 1x1 convolutions of its input, run as one.
    ``name`` prefixes the attributes that hold the fused weight and bias, ``var`` is the forward's
    variable for the fused output (both allocated in the class, beside its own names)."""

    fork: Fork
    branches: tuple[Branch, ...]
    heads: tuple[Layer, ...]
    name: str
    var: str


@dataclass
class Plan:
    """The decisions of the passes, keyed by the nodes of the class bodies they concern."""

    folded: set[Layer] = field(default_factory=set)
    folds_next: set[Layer] = field(default_factory=set)  # bare convs that fold the batchnorm row after them
    folded_norms: set[Layer] = field(default_factory=set)  # those batchnorm rows: identities now
    folds_act: dict[Layer, str] = field(default_factory=dict)  # those convs: the activation row they apply
    folded_acts: set[Layer] = field(default_factory=set)  # those activation rows: identities now
    fused: dict[Fork, tuple[Group, ...]] = field(default_factory=dict)
    residuals: dict[Fork, Layer] = field(default_factory=dict)  # residual -> the conv that adds its shortcut
    max_pools: set[Layer] = field(default_factory=set)  # 3x3 max pools, stride 1, padding 1: separable
    channels_last: bool = False
    onednn: bool = False
    owners: dict[Fork, object] = field(default_factory=dict, repr=False)

    def groups(self, cls) -> list[Group]:
        """The fused groups inside one class (a BlockClass or the ModelClass)."""
        return [g for fork, groups in self.fused.items() if self.owners[fork] is cls for g in groups]


def fold_batchnorm(net: Network, plan: Plan) -> Plan:
    """Every convolution with BatchNorm or a ReLU runs as one convolution (+ in-place ReLU); a bare
    convolution runs with the batchnorm row right after it folded in."""
    for body in _bodies(net):
        plan.folded |= {n for n in walk(body) if isinstance(n, Layer) and _foldable(n)}
    for items in _sequences(net):
        for conv, norm in zip(items, items[1:]):
            if _conv_then_norm(conv, norm):
                plan.folds_next.add(conv)
                plan.folded_norms.add(norm)
    return plan


FOLDABLE_ACTS = ("relu", "relu6")  # the activations the generated conv2d applies (and oneDNN fuses)


def fold_activations(net: Network, plan: Plan) -> Plan:
    """A ReLU or ReLU6 row right after a batchnorm row that :func:`fold_batchnorm` folded into the
    convolution before it is applied by that convolution too (its module then passes its input on):
    torchvision's conv, BN, activation rows (ResNet's, MobileNetV2's) run as one convolution."""
    for items in _sequences(net):
        for conv, norm, act in zip(items, items[1:], items[2:]):
            if conv in plan.folds_next and norm in plan.folded_norms and _foldable_act(act):
                plan.folds_act[conv] = act.op.kind.name
                plan.folded_acts.add(act)
    return plan


def fold_residuals(net: Network, plan: Plan) -> Plan:
    """A residual (an add merge, scale 1) whose body is flattened into its class and ends in a
    convolution that :func:`fold_batchnorm` folded, with no activation of its own, gets that
    convolution: it adds the shortcut's output and applies the merge's ReLU (the writer computes the
    shortcut first, and keeps the plain add where a ``when=`` or a flag argument decides the merge)."""
    for body in _bodies(net):
        for fork in (n for n in walk(body) if isinstance(n, Fork) and not n.split and n not in plan.fused):
            conv = _last_conv(fork, plan)
            if conv is not None:
                plan.residuals[fork] = conv
    return plan


def _last_conv(fork: Fork, plan: Plan) -> Layer | None:
    """The folded convolution a residual's body ends in, if it can add the shortcut."""
    merge = fork.merge
    if not isinstance(merge.kind, Add) or len(fork.branches) != 2:
        return None
    if merge["scale"] != 1 or "scale" in fork.stored:  # oneDNN's add has no scale on the conv's output
        return None
    body = fork.branches[1 - merge["shortcut"]]
    items = [n for n in body.body.items if not _identity(n)] if body.container is None else []
    if items and items[-1] in plan.folded and items[-1].op["act"] is None:
        return items[-1]
    if len(items) >= 2 and items[-2] in plan.folds_next and items[-1] in plan.folded_norms:
        return items[-2] if items[-2] not in plan.folds_act else None
    return None


def _identity(node) -> bool:
    return isinstance(node, Layer) and node.op.kind.identity


def _foldable_act(node) -> bool:
    kind = node.op.kind if isinstance(node, Layer) else None
    return isinstance(kind, Activation) and kind.name in FOLDABLE_ACTS


def _conv_then_norm(conv, norm) -> bool:
    return (
        isinstance(conv, Layer)
        and isinstance(conv.op.kind, Conv)
        and not conv.op["bn"]
        and conv.op["act"] is None
        and isinstance(norm, Layer)
        and isinstance(norm.op.kind, BatchNorm)
    )


def _sequences(net: Network):
    """Runs of nodes applied one after another: each Seq of every class body, and the network's stages
    (broken where an aux head reads a stage's output)."""
    for body in _bodies(net):
        yield from (node.items for node in walk(body) if isinstance(node, Seq))
    run = []
    for stage in net.model.stages:
        run.append(stage.node)
        if any(aux.after is stage for aux in net.model.auxes):
            yield run
            run = []
    yield run


def _foldable(layer: Layer) -> bool:
    op = layer.op
    return isinstance(op.kind, Conv) and (op["bn"] or op["act"] == "relu")


def fuse_siblings(net: Network, plan: Plan, minimum: int = 2) -> Plan:
    """Groups of at least ``minimum`` branches whose heads are folded 1x1 convolutions of the fork's
    input with the same activation; each group gets a fresh attribute name and a fresh local
    variable in its class."""
    scopes: dict[int, tuple[Scope, Scope]] = {}
    for cls, body in _classes(net):
        # fresh names in copies: the IR's scopes stay untouched (one Network compiles to both builds)
        names, local = scopes.setdefault(id(cls), (cls.attrs.copy(), cls.locals.copy()))
        for fork in (n for n in walk(body) if isinstance(n, Fork) and not n.split):
            heads = [(b, _head(b)) for b in fork.branches]
            groups = []
            for relu in (True, False):
                members = [
                    (b, h)
                    for b, h in heads
                    if h in plan.folded and _one_by_one(h) and h.op["act"] == ("relu" if relu else None)
                ]
                if len(members) >= minimum:
                    branches, layers = zip(*members)
                    name = names.fresh("fused", "fused 1x1 weights")
                    groups.append(Group(fork, branches, layers, name, local.fresh(name)))
            if groups:
                plan.fused[fork] = tuple(groups)
                plan.owners[fork] = cls
    return plan


def _head(branch: Branch) -> Layer | None:
    items = branch.body.items
    return items[0] if items and isinstance(items[0], Layer) else None


def _one_by_one(layer: Layer) -> bool:
    op = layer.op
    return op["kernel"] == (1, 1) and op["stride"] == 1 and op["pad"] == (0, 0) and op["groups"] == 1


def separable_max_pools(net: Network, plan: Plan) -> Plan:
    """Every max pooling over 3x3 windows with stride 1 and padding 1 runs as the maximum of each
    pixel's neighbours along the rows, then along the columns (``SeparableMaxPool2d``): the same
    numbers, without the int64 indices that torch's CPU max pooling writes beside them."""
    for body in _bodies(net):
        plan.max_pools |= {n for n in walk(body) if isinstance(n, Layer) and _three_by_three_same(n)}
    return plan


def _three_by_three_same(layer: Layer) -> bool:
    op = layer.op
    if not isinstance(op.kind, MaxPool):
        return False
    return op["kernel"] == (3, 3) and op["stride"] == 1 and op["pad"] == (1, 1)


def use_channels_last(net: Network, plan: Plan) -> Plan:
    plan.channels_last = True
    return plan


def use_onednn(net: Network, plan: Plan) -> Plan:
    """Every folded convolution (and fused group) runs, eagerly on the CPU, as one call of oneDNN's
    convolution with its ReLU fused (``torch.ops.mkldnn._convolution_pointwise``, through the
    generated file's ``conv2d``); under torch.compile or an export, as F.conv2d and F.relu."""
    plan.onednn = True
    return plan


PASSES = (
    fold_batchnorm,
    fold_activations,
    fuse_siblings,
    fold_residuals,
    separable_max_pools,
    use_channels_last,
    use_onednn,
)


def optimize(net: Network, passes=PASSES) -> Plan:
    """Run ``passes`` in order over a built network's class bodies."""
    plan = Plan()
    for fn in passes:
        plan = fn(net, plan)
    return plan


def _classes(net: Network):
    """Each class body of the generated file with its class: the blocks, then the network's."""
    for cls in net.blocks:
        yield cls, cls.body
    for stage in net.model.stages:
        yield net.model, stage.node


def _bodies(net: Network):
    return [body for _, body in _classes(net)] + [aux.node for aux in net.model.auxes]
