"""The ONNX backend: a network's eval-mode model, exported with ``torch.onnx`` to one ``.onnx`` file.

The model is the one :func:`incdsl.build_module` builds from the generated PyTorch source, so the ONNX
graph computes the same logits (aux heads are training-only and are not exported). The graph has one
input, ``x`` (N x C x H x W, the batch dimension dynamic), and one output, ``logits``. Weights are kept
inside the file. The file is written beside its target and renamed into place, so a failed export
leaves nothing behind.

>>> export("googlenet_tv", "googlenet.onnx")          # doctest: +SKIP
PosixPath('googlenet.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from ..errors import OutputError
from ..files import replacing
from ..ir import Network

INPUT_NAME, OUTPUT_NAME = "x", "logits"
EXAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch of 1 to a constant


def export(net: Network | str | Path, path: str | Path, optimize: bool = False, **overrides) -> Path:
    """Write the eval-mode model of ``net`` (a Network, spec path or shipped name) as ONNX to ``path``
    (its inference build with ``optimize``).

    ``overrides`` go to the generated ``build()`` (``num_classes=10``, ``aux_logits=False``, ...).
    Raises :class:`~incdsl.errors.OutputError` when torch, onnx or onnxscript is missing, when the
    export fails, or when ``path`` cannot be written.
    """
    _require_exporter()
    from .. import build_module, load

    net = net if isinstance(net, Network) else load(net)
    return export_model(build_module(net, optimize, **overrides), net.input.as_list(), path)


def export_model(model, input_shape: list[int], path: str | Path) -> Path:
    """Write a built (or trained) model, in eval mode, as ONNX; ``input_shape`` is [C, H, W]."""
    torch = _require_exporter()
    example = torch.randn(EXAMPLE_BATCH, *input_shape)
    path = Path(path)
    was_training = model.training
    try:
        with replacing(path, suffix=".onnx") as tmp:
            _torch_export(torch, model.eval(), example, tmp)
    finally:
        model.train(was_training)
    return path


def _require_exporter():
    """torch, once torch.onnx's dependencies are known to be importable."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        import torch
    except ImportError as exc:
        raise OutputError(
            f"ONNX export needs torch, onnx and onnxscript ({exc.name or exc} is missing)",
            hint="pip install 'incdsl[torch,onnx]'",
        ) from None
    return torch


def _torch_export(torch, model, example, tmp: Path) -> None:
    batch = torch.export.Dim("batch")
    try:
        with _quiet():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: batch}},
                external_data=False,  # one self-contained file: weights inside, nothing to rename
                dynamo=True,
            )
    except Exception as exc:
        raise OutputError(f"torch.onnx could not export the model: {exc}") from exc


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's narration (stdout), its log warnings (such as torchvision's operators
    being unavailable, which these models never use) and torch's internal deprecation warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
