"""The names a generated model file defines, allocated in one place.

A spec's names become Python names: template names become class names, row and branch names module
attributes, aux head names attributes and NamedTuple fields, template parameters constructor
arguments. Each lives in a :class:`Scope` that also knows the names the generated file itself uses
there (its imports, helper classes, ``build``, ``self``, ``x``, nn.Module's attributes, keywords and
builtins). Asking a scope for a taken name is an error naming both places, at ``check`` time, unless
the name is internal (a forward local), which the scope renames instead. So a spec that checks can
never produce a file with two things of one name.

>>> file = file_scope()
>>> file.claim("InceptionA", "class of template 'InceptionA'")
'InceptionA'
>>> file.claim("F", "class of template 'f'")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
incdsl.errors.SpecNameError: error: 'F' is reserved in generated code (import torch.nn.functional as F)...
>>> local = locals_scope(); local.fresh("branch1"), local.fresh("branch1"), local.fresh("torch")
('branch1', 'branch1_2', 'torch_2')
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

from incdsl.errors import Span, SpecNameError

# nn.Module's own attributes (dir(torch.nn.Module), kept current by a test): a spec name must not
# shadow them.
MODULE_ATTRIBUTES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
    half ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters
    parameters register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
    register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory smart_apply
    state_dict to to_empty train training type xpu zero_grad""".split()
)

_BUILTINS = {name: "a Python builtin" for name in dir(builtins) if not name.startswith("_")}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Owner:
    """What holds a name: a description, where the spec asked for it, and whether the generated file
    itself reserves it (an import, a helper, a keyword)."""

    what: str
    span: Span | None = None
    reserved: bool = False


class Scope:
    """One namespace of the generated file (the file, one class's attributes, one forward's locals)."""

    def __init__(self, kind: str, reserved: Mapping[str, str], renames: bool = False):
        self.kind = kind
        self.renames = renames
        self.names: dict[str, Owner] = dict(_owners(reserved))

    @classmethod
    def _of(cls, kind: str, owners: Mapping[str, Owner], renames: bool = False) -> Scope:
        """A scope whose names start as ``owners`` (copied): the reserved tables are made once."""
        scope = cls(kind, {}, renames)
        scope.names.update(owners)
        return scope

    def claim(self, name: str, what: str, span: Span | None = None, noun: str = "name") -> str:
        """Take ``name`` for ``what``; an error naming both owners when it is taken."""
        check_identifier(name, span, noun)
        if name in self.names:
            raise _clash(name, what, span, self.names[name], self.kind)
        self.names[name] = Owner(what, span)
        return name

    def claim_key(self, name: str, what: str, span: Span | None = None) -> str:
        """Take a key that is not an identifier (a quoted position of an nn.Sequential)."""
        if name in self.names:
            raise _clash(name, what, span, self.names[name], self.kind)
        self.names[name] = Owner(what, span)
        return name

    def fresh(self, base: str, what: str = "a local variable") -> str:
        """``base``, or ``base_2``, ``base_3``... : the first free name (for internal names only)."""
        name, i = base, 2
        while name in self.names or keyword.iskeyword(name):
            name, i = f"{base}_{i}", i + 1
        self.names[name] = Owner(what)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def copy(self) -> Scope:
        """An independent copy: names taken in it are not taken here."""
        return Scope._of(self.kind, self.names, self.renames)


def _clash(name: str, what: str, span: Span | None, other: Owner, kind: str) -> SpecNameError:
    if other.reserved:
        return SpecNameError(
            f"'{name}' is reserved in generated code ({other.what}); choose another name", span
        )
    where = f" at {other.span}" if other.span else ""
    return SpecNameError(
        f"'{name}' is already used by {other.what}{where}; here it would name {what} ({kind} must be unique)",
        span,
    )


def check_identifier(name: str, span: Span | None = None, noun: str = "name") -> None:
    """Refuse anything that could not be a plain Python name, saying why."""
    if not _IDENTIFIER.match(name):
        reason = "use letters, digits and '_', not starting with a digit"
    elif keyword.iskeyword(name):
        reason = "it is a Python keyword"
    elif name.startswith("__"):
        reason = "names starting with '__' are Python's own"
    else:
        return
    raise SpecNameError(f"'{name}' is not a valid {noun}: {reason}", span)


def file_scope() -> Scope:
    """Module-level names: classes, and what the generated file defines or imports whether or not one
    file uses it all (imports, helpers, ``SPEC``, ``build``), builtins."""
    return Scope._of("the names of the generated file", _file_owners())


def _file_names() -> dict[str, str]:
    """Read from the PyTorch backend's template, so a helper it gains is reserved at once."""
    from incdsl.backends.pytorch.names import defined_names

    return defined_names()


def attributes_scope(extra: dict[str, str] | None = None) -> Scope:
    """A module class's attributes (state_dict keys start with them)."""
    scope = Scope._of("the attributes of one module", _attribute_owners())
    scope.names.update(_owners(extra or {}))
    return scope


def parameters_scope(file: Scope) -> Scope:
    """A class's constructor arguments: they must not hide a module-level name used in ``__init__``."""
    reserved = {name: "a module-level name" for name in file.names}
    reserved.update(self="self", in_channels="the input channels argument")
    return Scope("constructor arguments", reserved)


def locals_scope() -> Scope:
    """A forward's local variables; renamed on clash, never an error."""
    return Scope._of("forward locals", _local_owners(), renames=True)


# The reserved names of each kind of scope, as owners: made once (a build makes scopes by the hundred).


def _owners(reserved: Mapping[str, str]) -> dict[str, Owner]:
    return {name: Owner(what, reserved=True) for name, what in reserved.items()}


@cache
def _file_owners() -> Mapping[str, Owner]:
    return MappingProxyType(_owners({**_BUILTINS, **_file_names()}))


@cache
def _attribute_owners() -> Mapping[str, Owner]:
    return MappingProxyType(_owners({name: "an attribute of every nn.Module" for name in MODULE_ATTRIBUTES}))


@cache
def _local_owners() -> Mapping[str, Owner]:
    return MappingProxyType(
        _owners({**_file_names(), **_BUILTINS, "self": "self", "x": "the forward's input"})
    )


def class_name(name: str) -> str:
    """``aux_classifier`` -> ``AuxClassifier``; ``InceptionA`` stays.

    >>> class_name("aux_classifier"), class_name("InceptionA"), class_name("f")
    ('AuxClassifier', 'InceptionA', 'F')
    """
    if "_" not in name and name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
