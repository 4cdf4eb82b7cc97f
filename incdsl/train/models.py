"""Turn a training target (shipped spec name, ``.inc`` file or generated ``model.py``) into a module."""

from __future__ import annotations

import importlib.util
import types
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from incdsl.train import TrainError


@dataclass(frozen=True)
class ModelBundle:
    """A built model and what the trainer needs to know about it (read from the file's ``SPEC``)."""

    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    aux_weights: dict[str, float] = field(default_factory=dict)
    source: str = field(default="", repr=False)  # the generated model.py text
    name: str = ""
    spec_text: str | None = field(default=None, repr=False)  # the .inc text, for a spec target
    input_size: int | None = None  # --input-size: built for N x N inputs, not the spec's input line's


def load_model(
    target: str,
    num_classes: int | None = None,
    fits_on=None,
    copies: int = 1,
    input_size: int | None = None,
) -> ModelBundle:
    """Build the model that ``target`` describes, with the spec's defaults.

    >>> bundle = load_model("tests/train/fixtures/tiny_model.py")
    >>> bundle.input_shape, bundle.num_classes, bundle.aux_weights
    ((3, 32, 32), 10, {'aux1': 0.3})

    ``num_classes`` rebuilds the classifier for a data set with another number of classes. With
    ``fits_on`` (a torch device), the model is first built on the meta device and refused with an
    OutOfMemory error, before anything is allocated, when ``copies`` of its parameters and buffers
    (weights, gradients, optimizer state) exceed that device's free memory. ``input_size`` N builds a
    spec for N x N inputs instead of its ``input`` line's (--input-size): its IR is built with the
    input replaced, so every shape, the classifier's width and the budget follow.
    """
    if target.endswith(".py"):
        module = _import_file(target)
        check_input_size(target, module, input_size)
    else:
        module = _compile(target, input_size)
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, dict) or not callable(getattr(module, "build", None)):
        raise TrainError(f"{target} defines no SPEC dict and build() function; is it a generated model?")
    overrides = {} if num_classes in (None, spec["classes"]) else {"num_classes": num_classes}
    if fits_on is not None:
        from incdsl import memory

        needed = copies * memory.module_bytes(lambda: module.build(**overrides))
        what = "training it needs" if copies > 1 else "its parameters need"
        memory.require(needed, fits_on, f"{spec.get('network', Path(target).stem)}: {what}")
    return ModelBundle(
        module=module.build(**overrides),
        input_shape=tuple(spec["input"]),
        num_classes=num_classes or spec["classes"],
        aux_weights=dict(spec.get("aux", {})),
        source=module.__incdsl_source__,
        name=spec.get("network", Path(target).stem),
        spec_text=None if target.endswith(".py") else _spec_text(target),
        input_size=input_size,
    )


def _import_file(path: str) -> types.ModuleType:
    file = Path(path)
    if not file.is_file():
        raise TrainError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"incdsl_model_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__incdsl_source__ = file.read_text()
    return module


def check_input_size(target: str, module: types.ModuleType, input_size: int | None) -> None:
    """A generated model file is built for its SPEC's input: --input-size cannot change it."""
    spec = getattr(module, "SPEC", None)
    shape = tuple(spec.get("input", ())) if isinstance(spec, dict) else ()
    if input_size is None or shape[1:] == (input_size, input_size):
        return
    raise TrainError(
        f"--input-size {input_size}: {target} is a generated model, built for its input "
        f"{'x'.join(map(str, shape[1:])) or 'as written'}",
        hint="train the spec (.inc file or shipped name) to change its input size",
    )


def spec_network(spec_text: str, name: str, classes: int | None = None, input_size: int | None = None):
    """The IR of a spec's text, for ``classes`` outputs and ``input_size`` x ``input_size`` inputs (each
    None: the spec's). A spec that does not work at that size (a feature map shrunk to nothing) is the
    compiler's error, with a note naming --input-size."""
    import incdsl
    from incdsl.errors import IncdslError
    from incdsl.syntax import ast

    spec = incdsl.parse(spec_text, name)
    written, size = spec.input, None
    if input_size is not None and written is not None and len(written.dims) == 3:
        size = ast.Size((input_size, input_size, written.dims[2]))
    try:
        return incdsl.network(spec, classes=classes, input=size)
    except IncdslError as error:
        if size is not None and size != written:
            error.notes.append(f"with --input-size {input_size} (the spec's input is {written})")
        raise


def _compile(target: str, input_size: int | None = None) -> types.ModuleType:
    import incdsl  # the compiler; imported here so the trainer loads without it
    from incdsl.backends.pytorch.writer import load_source

    if input_size is None:
        source = incdsl.compile_source(target)
    else:
        text, path = incdsl.read(target)
        source = incdsl.compile_source(spec_network(text, path, input_size=input_size))
    module = load_source(source, f"incdsl_model_{Path(target).stem}")
    module.__incdsl_source__ = source
    return module


def _spec_text(target: str) -> str:
    import incdsl

    return incdsl.read(target)[0]
