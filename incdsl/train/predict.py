"""``incdsl predict``: a trained checkpoint's top-k classes for images, and ``incdsl export``: its weights
as TorchScript, ONNX or safetensors.

Images are read as evaluation reads them (the checkpoint's 1-crop view: its evaluation crop, the spec's
input size and channels) and the checkpoint's averaged weights are used when its run kept them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from incdsl.train import TrainError
from incdsl.train.augment import to_input
from incdsl.train.checkpoint import FOR_EVALUATION, check_contents, load_checkpoint
from incdsl.train.data import IMAGE_SUFFIXES, decode_image, list_images
from incdsl.train.distributed import pick_device
from incdsl.train.evaluate import bundle_from_checkpoint, trained_augment
from incdsl.train.models import ModelBundle
from incdsl.train.views import eval_view

PREDICT_BATCH = 64


@dataclass(frozen=True)
class Prediction:
    """One image's most probable classes, best first: (class name, probability)."""

    image: str
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": name, "probability": p} for name, p in self.top]}


def trained_model(target: str, checkpoint: Path, device: torch.device) -> tuple[ModelBundle, dict]:
    """``target`` with the checkpoint's evaluation weights, in eval mode on ``device``; and the state."""
    state = load_checkpoint(Path(checkpoint))
    check_contents(state, Path(checkpoint), FOR_EVALUATION)
    bundle = bundle_from_checkpoint(target, state, Path(checkpoint), state["classes"], device)
    bundle.module.to(device).eval()
    return bundle, state


def image_paths(inputs: Sequence[str]) -> list[Path]:
    """The images named, folders expanded (their image files, recursively, sorted); a TrainError for
    a name that is neither an image file nor a folder."""
    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise TrainError(
                    f"{path} holds no images", hint=f"suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}"
                )
            paths += found
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            raise TrainError(f"{path} is not a regular file or a folder")
        else:
            raise TrainError(f"{path} does not exist")
    return paths


@torch.no_grad()
def predict(
    target: str, checkpoint: Path, inputs: Sequence[str], top: int = 5, device: str = "auto"
) -> list[Prediction]:
    """The ``top`` most probable classes of each image in ``inputs`` (files or folders)."""
    from incdsl.train import quantize

    chosen = pick_device(device, 0)
    if quantize.is_artefact(checkpoint):  # an int8 build of incdsl quantize
        state, model, shape = quantize.load_artefact(Path(checkpoint))
    else:
        bundle, state = trained_model(target, checkpoint, chosen)
        model, shape = bundle.module, bundle.input_shape
    classes = state["classes"]
    view = eval_view(1, shape[1:], trained_augment(state).eval_crop)
    paths = image_paths(inputs)
    predictions = []
    for start in range(0, len(paths), PREDICT_BATCH):
        chunk = paths[start : start + PREDICT_BATCH]
        views = torch.cat([view(decode_image(path, shape[0])) for path in chunk])
        probabilities = model(to_input(views.to(chosen))).float().softmax(dim=-1).cpu()
        best = probabilities.topk(min(top, len(classes)), dim=1)
        for path, values, indices in zip(chunk, best.values.tolist(), best.indices.tolist()):
            predictions.append(Prediction(str(path), tuple((classes[i], p) for i, p in zip(indices, values))))
    return predictions


def prediction_table(predictions: Sequence[Prediction]) -> list[str]:
    """One line per image: its path, then each class with its probability."""
    width = max((len(prediction.image) for prediction in predictions), default=0)
    return [
        f"{prediction.image:<{width}}  " + "  ".join(f"{name} {p:.4f}" for name, p in prediction.top)
        for prediction in predictions
    ]


EXPORT_SUFFIXES = (".pt", ".onnx", ".safetensors")
INPUT_NOTE = "pixels scaled to [-1, 1] (x / 127.5 - 1), N x C x H x W"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote: the file, and the largest difference of its logits from the model's on a
    fixed random batch (None when it could not be checked: onnxruntime missing)."""

    path: Path
    difference: float | None


def export(target: str, checkpoint: Path, output: str | Path) -> Exported:
    """Write the checkpoint's evaluation model as TorchScript (``.pt``), ONNX (``.onnx``) or its weights
    as safetensors (``.safetensors``, with the class names and input in its metadata); the written file
    is read back and run (for weights: loaded into a fresh model) on a fixed batch, beside the model."""
    from incdsl.files import check_output

    output = Path(output)
    if output.suffix.lower() not in EXPORT_SUFFIXES:
        raise TrainError(
            f"cannot export to {output}: its suffix says no format",
            hint="-o model.pt (TorchScript), model.onnx or model.safetensors (weights)",
        )
    check_output(output, [checkpoint])
    bundle, state = trained_model(target, checkpoint, torch.device("cpu"))
    model = bundle.module
    example = torch.randn(2, *bundle.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).float()
    suffix = output.suffix.lower()
    if suffix == ".onnx":
        actual = _export_onnx(model, bundle, output, example)
    elif suffix == ".pt":
        actual = _export_torchscript(model, state, output, example)
    else:
        actual = _export_safetensors(target, model, bundle, state, output, example)
    difference = None if actual is None else (actual - expected).abs().max().item()
    return Exported(output, difference)


def _metadata(bundle: ModelBundle, state: dict) -> dict[str, str]:
    return {
        "classes": json.dumps(state["classes"]),
        "input": json.dumps(list(bundle.input_shape)),
        "input_scaling": INPUT_NOTE,
        "network": bundle.name,
    }


def _export_onnx(model, bundle: ModelBundle, output: Path, example: torch.Tensor) -> torch.Tensor | None:
    from incdsl.backends.onnx import export_model

    export_model(model, list(bundle.input_shape), output)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    return torch.from_numpy(logits).float()


def _export_torchscript(model, state: dict, output: Path, example: torch.Tensor) -> torch.Tensor:
    from incdsl.files import replacing

    try:
        with torch.no_grad():
            scripted = torch.jit.trace(model, example, check_trace=False)
    except Exception as error:  # a model tracing cannot follow
        raise TrainError(
            f"cannot export {output} as TorchScript: {str(error).splitlines()[0][:200]}"
        ) from None
    extra = {"classes.json": json.dumps(state["classes"]), "input_scaling.txt": INPUT_NOTE}
    with replacing(output) as temporary:
        torch.jit.save(scripted, str(temporary), _extra_files=extra)
    with torch.no_grad():
        return torch.jit.load(str(output)).eval()(example).float()


def _export_safetensors(target, model, bundle, state, output: Path, example: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    from incdsl.files import replacing
    from incdsl.train.checkpoint import load_weights
    from incdsl.train.models import load_model

    weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    with replacing(output) as temporary:
        save_file(weights, str(temporary), metadata=_metadata(bundle, state))
    from incdsl.train.evaluate import trained_input_size

    size = trained_input_size(state)
    fresh = load_model(target, num_classes=len(state["classes"]), input_size=size).module.eval()
    load_weights(fresh, load_file(str(output)), str(output))
    with torch.no_grad():
        return fresh(example).float()
