"""The ONNX backend: a network's eval-mode model, exported with ``torch.onnx`` to one ``.onnx`` file.

The model is the one :func:`incdsl.build_module` builds from the generated PyTorch source, so the ONNX
graph computes the same logits (aux heads are training-only and are not exported). The graph has one
input, ``x`` (N x C x H x W, the batch dimension dynamic), and one output, ``logits``. Weights are kept
inside the file. The file is written beside its target and renamed into place, so a failed export
leaves nothing behind.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it traces the
eval-mode module once and folds BatchNorm into the convolutions before it, in about 1 s for Inception-v3
here, where the ``torch.export``-based one (``dynamo=True``) takes 10 s (capture, decompositions,
onnxscript's rewriting and constant folding) for the same graph. Both give the same logits (within
1e-8 on Inception-v3 through onnxruntime). Should the tracing exporter fail, or be gone from a later
torch, the ``torch.export``-based one is used instead.

>>> export("googlenet_tv", "googlenet.onnx")          # doctest: +SKIP
PosixPath('googlenet.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from incdsl.errors import OutputError
from incdsl.files import replacing
from incdsl.ir.tree import Network

INPUT_NAME, OUTPUT_NAME = "x", "logits"
EXAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch of 1 to a constant
OPSET = 18  # the torch.export-based exporter's; onnxruntime 1.17 and OpenVINO 2024 read it


def export(
    net: Network | str | Path,
    path: str | Path,
    optimize: bool = False,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> Path:
    """Write the eval-mode model of ``net`` (a Network, spec path or shipped name) as ONNX to ``path``
    (its inference build with ``optimize``). ``progress`` is called with a line before the export and
    one after it (the CLI prints them on stderr).

    ``overrides`` go to the generated ``build()`` (``num_classes=10``, ``aux_logits=False``, ...).
    Raises :class:`~incdsl.errors.OutputError` when torch, onnx or onnxscript is missing, when the
    export fails, or when ``path`` cannot be written.
    """
    _require_exporter()
    from incdsl import build_module, load

    net = net if isinstance(net, Network) else load(net)
    say = progress or (lambda line: None)
    say(f"exporting {net.name} to ONNX (torch.onnx, tracing exporter)")
    started = time.perf_counter()
    path = export_model(build_module(net, optimize, **overrides), net.input.as_list(), path, say)
    say(f"exported {net.name} in {time.perf_counter() - started:.1f} s")
    return path


def export_model(
    model, input_shape: list[int], path: str | Path, progress: Callable[[str], None] | None = None
) -> Path:
    """Write a built (or trained) model, in eval mode, as ONNX; ``input_shape`` is [C, H, W].
    ``progress`` hears when the tracing exporter cannot, and the other is used."""
    torch = _require_exporter()
    example = torch.randn(EXAMPLE_BATCH, *input_shape)
    path = Path(path)
    was_training = model.training
    try:
        with replacing(path, suffix=".onnx") as tmp:
            try:
                _trace_export(torch, model.eval(), example, tmp)
                why = None if _computes_the_same(torch, model, tmp, input_shape) else "its logits differ"
            except Exception as error:  # an operator the tracing exporter lacks, or a torch without it
                why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if why is not None:
                if progress:
                    progress(f"the tracing exporter cannot ({why[:120]}): using the torch.export-based one")
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


def _trace_export(torch, model, example, tmp: Path) -> None:
    """The TorchScript-based exporter (see the module docstring for why)."""
    with _quiet(), _native_output_silenced(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,  # BatchNorm into the convolution before it, as onnxruntime would
            dynamo=False,
        )


def _computes_the_same(torch, model, path: Path, input_shape: list[int]) -> bool:
    """Whether onnxruntime, given the file, computes the model's logits at a batch size other than the
    traced one (a trace can freeze a shape or a branch); True when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return True
    x = torch.randn(EXAMPLE_BATCH + 1, *input_shape)
    with torch.no_grad():
        expected = model(x)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    return bool(torch.allclose(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4))


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
                dynamic_shapes=({0: batch},),  # by position: whatever forward names its input
                external_data=False,  # one self-contained file: weights inside, nothing to rename
                dynamo=True,
            )
    except Exception as exc:
        raise OutputError(f"torch.onnx could not export the model: {exc}") from exc


@contextlib.contextmanager
def _native_output_silenced():
    """File descriptors 1 and 2 sent to /dev/null: on an operator it lacks (ShuffleNet's
    channel_shuffle), the tracing exporter's C++ side prints the whole graph before raising."""
    import sys

    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    saved = []
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(null, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


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
            warnings.simplefilter("ignore", UserWarning)  # "legacy TorchScript-based ONNX export"
            warnings.simplefilter("ignore", Warning)  # the tracer's: _trace_export checks the result instead
            yield
    finally:
        logger.setLevel(level)
