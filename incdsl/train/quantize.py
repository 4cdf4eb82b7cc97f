"""``incdsl quantize``: a checkpoint's int8 inference build, calibrated on the user's images.

The checkpoint's evaluation model is exported to ONNX, its BatchNorms folded and shapes inferred
(onnxruntime's pre-processing), and quantized statically by onnxruntime: weights int8 per output
channel, activations uint8 per tensor with ranges observed (min/max) on calibration images, in the QDQ
format that onnxruntime fuses into integer convolutions (QLinearConv, QLinearConcat, QGemm) on x86.
Calibration images are the training split of ``--data`` (a folder, "digits" or "fake"), framed as
evaluation frames them (the checkpoint's 1-crop view), so that the validation images stay unseen.

The artefact is one ``.onnx`` file that needs only onnxruntime; its metadata (key ``incdsl``) holds the
class names, the input, the recipe's framing and the calibration, so that ``incdsl eval`` scores it as it
scores a checkpoint. Why onnxruntime rather than PyTorch's x86 quantization: see the README's "int8".

>>> quantize("mini_googlenet", Path("runs/d/best.pt"), "digits", "model.int8.onnx").agreement
... # doctest: +SKIP
0.996
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from incdsl.train import TrainError
from incdsl.train.augment import to_input
from incdsl.train.data import check_readable, collate, open_split
from incdsl.train.evaluate import saved_val_split, trained_augment
from incdsl.train.predict import INPUT_NOTE, trained_model
from incdsl.train.views import eval_view

FORMAT = "incdsl-int8/1"
METADATA_KEY = "incdsl"
CALIBRATION_IMAGES = 512  # min/max ranges settle within a few hundred images (see the README's "int8")
MAX_CALIBRATION_IMAGES = 1_000_000
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Quantized:
    """What ``quantize`` wrote, and how its logits compare with the checkpoint's fp32 model on the
    calibration images: the fraction whose top class is the same, and the largest logit difference."""

    path: Path
    images: int  # calibration images used
    skipped: int  # unreadable ones skipped (--skip-unreadable)
    agreement: float
    difference: float


def require_onnxruntime():
    """onnxruntime and its quantization tools; a TrainError saying what to install when missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as error:
        raise TrainError(
            f"int8 needs onnx, onnxscript and onnxruntime ({error.name or error} is missing)",
            hint="pip install 'incdsl[onnx]'",
        ) from None
    return onnxruntime


def quantize(
    target: str,
    checkpoint: Path,
    data: str,
    output: str | Path,
    images: int = CALIBRATION_IMAGES,
    skip_unreadable: bool = False,
    val_split: float | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Quantized:
    """Write ``checkpoint``'s model as int8 ONNX to ``output``, calibrated on up to ``images`` training
    images of ``data``; nothing is written when the data cannot be read or the quantization fails.
    ``progress`` is told each step as it starts (the export of a large network takes a while)."""
    from incdsl.files import check_output

    require_onnxruntime()
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise TrainError(f"cannot write {output}: the int8 build is an ONNX file", hint="-o model.int8.onnx")
    check_output(output, [checkpoint])
    bundle, state = trained_model(target, checkpoint, torch.device("cpu"))
    split = val_split if val_split is not None else saved_val_split(state, data)
    batches, skipped = calibration_batches(data, bundle.input_shape, state, images, skip_unreadable, split)
    count = sum(len(batch) for batch in batches)
    progress(f"exporting {bundle.name} to ONNX, then calibrating on {count} images and quantizing")
    with tempfile.TemporaryDirectory(prefix="incdsl-int8-") as work:
        quantized = _quantize_onnx(bundle, Path(work), batches)
        _write_with_metadata(quantized, output, _metadata(bundle, state, data, split, batches, checkpoint))
    progress(f"comparing {output.name} with the checkpoint's model on the calibration images")
    agreement, difference = compare(bundle.module, open_session(output), batches)
    return Quantized(output, count, skipped, agreement, difference)


def calibration_batches(
    data: str, shape, state: dict, images: int, skip_unreadable: bool, val_split: float
) -> tuple[list[Tensor], int]:
    """Up to ``images`` network inputs from the training split of ``data`` (a fixed random choice, so
    every class is represented), framed as the checkpoint's evaluation frames them; and how many were
    skipped as unreadable."""
    view = eval_view(1, shape[1:], trained_augment(state).eval_crop)
    dataset = open_split(data, "train", shape, view, state["classes"], val_split=val_split).dataset
    chosen = sorted(random.Random(0).sample(range(len(dataset)), min(images, len(dataset))))
    batches, skipped = [], 0
    for start in range(0, len(chosen), CALIBRATION_BATCH):
        samples = [dataset[index] for index in chosen[start : start + CALIBRATION_BATCH]]
        views, _, unreadable = collate(samples)[:3]  # 1-crop views: one (1, C, H, W) stack per image
        skipped += check_readable(unreadable, skip_unreadable)
        if len(views):
            batches.append(to_input(views))
    if not batches:
        raise TrainError(f"--data {data}: no readable calibration images")
    return batches, skipped


def _quantize_onnx(bundle, work: Path, batches: list[Tensor]) -> Path:
    """fp32 export, pre-processing (BatchNorm folded, shapes inferred), static int8 quantization."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from incdsl.backends.onnx import INPUT_NAME, export_model

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    fp32, prepared, int8 = work / "fp32.onnx", work / "prepared.onnx", work / "int8.onnx"
    export_model(bundle.module, list(bundle.input_shape), fp32)
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(int8),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except Exception as error:  # onnxruntime's tools fail in many ways on a graph they do not know
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise TrainError(f"onnxruntime could not quantize {bundle.name}: {first}") from None
    return int8


class _quiet:
    """onnxruntime's quantization logs every node it skips and warns about pre-processing: not for
    the user's terminal."""

    def __enter__(self):
        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.logger.setLevel(self.level)


def _metadata(bundle, state: dict, data: str, val_split: float, batches, checkpoint: Path) -> dict:
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    return {
        "format": FORMAT,
        "network": bundle.name,
        "classes": state["classes"],
        "recipe": state["recipe"],
        "augment": dataclasses.asdict(trained_augment(state)),
        "config": {key: config[key] for key in ("data", "val_split", "input_size") if key in config},
        "input": list(bundle.input_shape),
        "input_scaling": INPUT_NOTE,
        "calibration": {
            "data": data,
            "val_split": val_split,
            "images": sum(len(batch) for batch in batches),
            "method": "minmax",
        },
        "checkpoint": Path(checkpoint).name,
    }


def _write_with_metadata(source: Path, output: Path, metadata: dict) -> None:
    import onnx

    from incdsl.files import replacing

    model = onnx.load(str(source))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    with replacing(output, suffix=".onnx") as temporary:
        onnx.save(model, str(temporary))


def open_session(path: Path):
    """An onnxruntime session on the CPU with every graph optimization, as many threads as torch uses
    (so that --threads, or torch.set_num_threads, holds for it too)."""
    onnxruntime = require_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # not ONNX, damaged, or an operator this onnxruntime lacks
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise TrainError(f"{path} is not a model onnxruntime can run ({first})") from None


@torch.no_grad()
def compare(module, session, batches: list[Tensor]) -> tuple[float, float]:
    """The fraction of images whose top class ``session`` and ``module`` agree on, and the largest
    absolute difference of their logits."""
    agree, count, difference = 0, 0, 0.0
    name = session.get_inputs()[0].name
    for batch in batches:
        expected = module(batch).float()
        (actual,) = session.run(None, {name: batch.numpy()})
        actual = torch.from_numpy(actual).float()
        agree += int((expected.argmax(1) == actual.argmax(1)).sum())
        count += len(batch)
        difference = max(difference, float((expected - actual).abs().max()))
    return agree / max(count, 1), difference


class OnnxModel:
    """An ONNX artefact in the place of a module for evaluation: called with a batch of inputs, it
    returns the logits on the inputs' device."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, inputs: Tensor) -> Tensor:
        batch = inputs.detach().float().cpu().contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(np.asarray(logits)).to(inputs.device)

    def to(self, device) -> OnnxModel:
        return self

    def eval(self) -> OnnxModel:
        return self


def is_artefact(path: Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_artefact(path: Path) -> tuple[dict, OnnxModel, tuple[int, int, int]]:
    """An int8 artefact of ``quantize`` as evaluation uses a checkpoint: a state holding its classes,
    recipe, augmentation and config; the model; and its input shape. A TrainError when ``path`` is not
    one (another ONNX file has no incdsl metadata)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"no model at {path}")
    session = open_session(path)
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        saved = json.loads(text) if text else None
    except ValueError:
        saved = None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise TrainError(
            f"{path} is not an int8 build of incdsl quantize (no incdsl metadata)",
            hint="incdsl quantize SPEC --checkpoint best.pt --data DATA -o model.int8.onnx writes one",
        )
    return _artefact_state(saved, path), OnnxModel(session), _artefact_input(saved, path)


def _artefact_state(saved: dict, path: Path) -> dict:
    classes, recipe = saved.get("classes"), saved.get("recipe")
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        raise TrainError(f"{path} is a damaged int8 build: its classes are not a list of names")
    if not isinstance(recipe, str):
        raise TrainError(f"{path} is a damaged int8 build: its recipe is not a name")
    config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    return {"classes": classes, "recipe": recipe, "augment": saved.get("augment"), "config": config}


def _artefact_input(saved: dict, path: Path) -> tuple[int, int, int]:
    shape = saved.get("input")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 65536 for n in shape)
    ):
        raise TrainError(f"{path} is a damaged int8 build: its input is not C x H x W")
    return tuple(shape)
