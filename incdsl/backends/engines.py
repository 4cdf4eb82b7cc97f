"""The inference engines people deploy CPU models with, ONNX Runtime and OpenVINO: as compile targets
(``incdsl compile SPEC --target onnxruntime|openvino -o FILE``) and as variants of ``incdsl bench``.

Both start from the ONNX export of the plain build (:mod:`incdsl.backends.onnx`), so they run the same
weights as the PyTorch builds:

- **onnxruntime** writes ``FILE.onnx``: the export after onnxruntime's graph optimizations (constant
  folding, BatchNorm into the convolution, convolution + activation fusion, redundant nodes removed),
  saved by a session with ``optimized_model_filepath`` at ``ORT_ENABLE_EXTENDED``: the highest level
  whose result runs on any CPU. ``ORT_ENABLE_ALL`` adds layout transformations (NCHWc blocks sized to
  this CPU's vector width) that onnxruntime's documentation says not to save; :func:`load` applies
  them when a session starts, in milliseconds. Load it with
  ``onnxruntime.InferenceSession("FILE.onnx")``.
- **openvino** writes ``FILE.xml`` and its weights ``FILE.bin`` beside it (OpenVINO's IR, from
  ``openvino.convert_model`` and ``openvino.save_model``), in fp32 unless ``fp16`` asks for fp16 weights.
  OpenVINO's CPU plugin fuses and lays out the graph when the model is compiled for the device; load it
  with ``openvino.Core().compile_model("FILE.xml", "CPU")``. On a CPU with AMX or AVX-512 bf16 the
  plugin then computes in bf16 by default: :func:`load` asks for f32 (``INFERENCE_PRECISION_HINT``), so
  that the logits are the PyTorch model's.

Each file is written beside its target and renamed into place (:mod:`incdsl.files`), so a failure
leaves nothing behind.

>>> write("googlenet_tv", "onnxruntime", "googlenet.onnx")     # doctest: +SKIP
[PosixPath('googlenet.onnx')]
>>> run = load("onnxruntime", "googlenet.onnx", threads=1)      # doctest: +SKIP
>>> run(numpy.zeros((8, 3, 224, 224), numpy.float32)).shape     # doctest: +SKIP
(8, 1000)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from incdsl.errors import IncdslError, OutputError
from incdsl.files import replacing
from incdsl.ir.tree import Network


@dataclass(frozen=True)
class Engine:
    name: str
    module: str  # what to import
    suffix: str  # the output file's
    install: str  # how to get it


ENGINES = {
    "onnxruntime": Engine("onnxruntime", "onnxruntime", ".onnx", "pip install 'incdsl[onnx]'"),
    "openvino": Engine("openvino", "openvino", ".xml", "pip install 'incdsl[deploy]'"),
}


def engine(name: str) -> Engine:
    """The engine called ``name``; an IncdslError naming the known ones otherwise."""
    from incdsl.errors import did_you_mean

    if name not in ENGINES:
        raise IncdslError(
            f"unknown engine '{name}'", hint=did_you_mean(name, ENGINES) or f"one of {', '.join(ENGINES)}"
        )
    return ENGINES[name]


def version(name: str) -> str | None:
    """The installed version of the engine, or None when it cannot be imported."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        importlib.import_module(engine(name).module)
        return installed(engine(name).module)
    except (ImportError, PackageNotFoundError):
        return None


def outputs(name: str, path: str | os.PathLike) -> list[Path]:
    """The files the target writes for ``-o path``: the file, and OpenVINO's weights beside it."""
    found = engine(name)
    path = Path(path)
    if path.suffix.lower() != found.suffix:
        raise OutputError(
            f"--target {name} writes a {found.suffix} file, not {path.name}",
            hint=f"-o {path.with_suffix(found.suffix).name}"
            + (" (the weights go to a .bin beside it)" if name == "openvino" else ""),
        )
    return [path, path.with_suffix(".bin")] if name == "openvino" else [path]


def write(
    net: Network | str | Path,
    name: str,
    path: str | os.PathLike,
    fp16: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the engine's artefact for ``net`` (its plain build, with the weights a fresh build starts
    with; :func:`write_model` for trained ones) to ``path``; the files written. ``fp16``: OpenVINO's
    weights stored as fp16 (OpenVINO only)."""
    from incdsl import build_module
    from incdsl import load as load_spec

    files = outputs(name, path)
    if fp16 and name != "openvino":
        raise IncdslError("--fp16 is for --target openvino (its weights stored as fp16)")
    _require(name)
    net = net if isinstance(net, Network) else load_spec(net)
    return write_model(build_module(net), net.input.as_list(), name, files, fp16, progress, net.name)


def write_model(model, input_shape, name, files, fp16=False, progress=None, what="the model") -> list[Path]:
    """:func:`write` for a built (or trained) module; ``files`` as :func:`outputs` gives them."""
    from incdsl.backends import onnx

    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="incdsl-") as folder:
        exported = Path(folder) / "model.onnx"
        say(f"exporting {what} to ONNX (torch.onnx, tracing exporter)")
        onnx.export_model(model, input_shape, exported, say)
        say(f"optimizing for {name}")
        if name == "onnxruntime":
            with replacing(files[0], suffix=".onnx") as tmp:
                _ort_session(exported, threads=1, level="extended", save_to=tmp)
        else:
            _write_openvino(exported, files, fp16)
    return files


def _write_openvino(exported: Path, files: list[Path], fp16: bool) -> None:
    """The IR: both files written under temporary names beside their targets, renamed (the weights
    first) once both are complete."""
    import openvino

    model = openvino.convert_model(str(exported))
    with replacing(files[0], suffix=".xml") as xml, replacing(files[1], suffix=".bin") as weights:
        with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".incdsl-") as folder:
            saved = Path(folder) / "model.xml"
            openvino.save_model(model, str(saved), compress_to_fp16=fp16)
            os.replace(saved, xml)
            os.replace(saved.with_suffix(".bin"), weights)


def _require(name: str):
    try:
        return importlib.import_module(engine(name).module)
    except ImportError as error:
        raise IncdslError(
            f"--target {name} needs {engine(name).module} ({error})", hint=engine(name).install
        ) from None


# running -------------------------------------------------------------------------------------------
def load(name: str, path: str | os.PathLike, threads: int = 1) -> Callable:
    """A function from a float32 array (N x C x H x W) to the logits, running the engine's file at
    ``path`` (an ``.onnx`` for either engine, or OpenVINO's ``.xml``) with ``threads`` intra-op threads
    and every graph optimization the engine offers. ``run.threads`` is the count the engine reports."""
    _require(name)
    return _ort_runner(path, threads) if name == "onnxruntime" else _openvino_runner(path, threads)


def _ort_session(path, threads: int, level: str = "all", save_to: Path | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    levels = onnxruntime.GraphOptimizationLevel
    options.graph_optimization_level = {"all": levels.ORT_ENABLE_ALL, "extended": levels.ORT_ENABLE_EXTENDED}[
        level
    ]
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise IncdslError(f"onnxruntime cannot load {path}: {str(error).splitlines()[0]}") from None


def _ort_runner(path, threads: int) -> Callable:
    session = _ort_session(path, threads)
    input_name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {input_name: x})[0]

    run.threads = session.get_session_options().intra_op_num_threads
    return run


def _openvino_runner(path, threads: int) -> Callable:
    import numpy
    import openvino

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    try:
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
    except Exception as error:  # RuntimeError, with OpenVINO's own text
        raise IncdslError(f"OpenVINO cannot load {path}: {str(error).strip().splitlines()[0]}") from None
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x):
        return numpy.array(request.infer({0: x})[output])

    run.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    return run


@contextlib.contextmanager
def exported(model, input_shape) -> Iterator[Path]:
    """A temporary ONNX export of ``model``, deleted afterwards (what ``incdsl bench`` runs)."""
    from incdsl.backends import onnx

    with tempfile.TemporaryDirectory(prefix="incdsl-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.export_model(model, input_shape, path)
        yield path
