"""Data sets: image folders, scikit-learn's digits (written once as an image folder), and fake images.

A folder follows the ImageFolder convention, ``DIR/train/<class>/*.png|jpg|...`` and ``DIR/val/<class>/...``.
Images of any size and mode are decoded with Pillow and converted to the model's channels; a *view*
function (views.py) then resizes or crops them. Every data set yields ``(uint8 tensor, class index)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from incdsl import numbers
from incdsl.train import TrainError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
FAKE_TRAIN_IMAGES = 512  # "fake:N" asks for N; validation gets a quarter as many
MAX_FAKE_IMAGES = 10_000_000
DIGITS_VAL_EVERY = 5  # every fifth digit is a validation image: a fixed split of 1438 + 359 images

View = Callable[[Tensor], Tensor]


class FolderImages(Dataset):
    """Images listed as (path, class index), decoded to ``channels`` and passed through ``view``."""

    def __init__(self, samples: Sequence[tuple[Path, int]], channels: int, view: View):
        self.samples, self.channels, self.view = list(samples), channels, view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor | Unreadable, int]:
        path, label = self.samples[index]
        try:
            return self.view(decode_image(path, self.channels)), label
        except TrainError as error:  # reported by the training process (see collate), not by a worker
            return Unreadable(str(path), error.message), label


class TensorImages(Dataset):
    """Images already in memory, ``(N, C, H, W)`` uint8, passed through ``view``."""

    def __init__(self, images: Tensor, labels: Tensor, view: View):
        self.images, self.labels, self.view = images, labels, view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.view(self.images[index]), int(self.labels[index])


@dataclass(frozen=True)
class Unreadable:
    """An image that could not be decoded, in place of its pixels: the trainer stops at it, naming the
    file, or skips and counts it (--skip-unreadable)."""

    path: str
    reason: str


def collate(samples: list[tuple[Tensor | Unreadable, int]]) -> tuple:
    """A batch of the readable samples: images, labels, and the unreadable ones set aside (and, for
    stacks of evaluation views, each image's count: see collate_views)."""
    unreadable = [image for image, _ in samples if isinstance(image, Unreadable)]
    readable = [sample for sample in samples if not isinstance(sample[0], Unreadable)]
    if not readable:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), unreadable
    if readable[0][0].dim() == 4:  # evaluation's stacks of views, as many as each image has
        return collate_views(readable, unreadable)
    images, labels = default_collate(readable)
    return images, labels, unreadable


def collate_views(readable, unreadable):
    """Stacks of views, each image's count its own (a square image has fewer distinct 144-crop views
    than a landscape one): all views in one ``(views, C, H, W)`` tensor, the labels, the unreadable
    samples, and each image's number of views."""
    counts = torch.tensor([len(views) for views, _ in readable], dtype=torch.long)
    labels = torch.tensor([label for _, label in readable], dtype=torch.long)
    return torch.cat([views for views, _ in readable]), labels, unreadable, counts


def split_labels(dataset: Dataset) -> Tensor:
    """Every image's class index, without reading the images."""
    if isinstance(dataset, FolderImages):
        return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)
    return dataset.labels.long()


class BalancedSampler(torch.utils.data.Sampler):
    """Class-balanced sampling for imbalanced data: each epoch draws as many images as the split has,
    with replacement, every class equally likely (an image with probability 1 / (classes x its class's
    images)). The draw comes from (seed, epoch) alone, as the shuffled order does, so a resumed run
    repeats it; under torchrun each process takes every world_size-th image of the same draw."""

    def __init__(self, labels: Tensor, world_size: int = 1, rank: int = 0, seed: int = 0):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.clamp_min(1).double())[labels]
        self.world_size, self.rank, self.seed, self.epoch = world_size, rank, seed, 0
        self.count = len(labels) // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.multinomial(
            self.weights, self.count * self.world_size, replacement=True, generator=generator
        )
        return iter(drawn[self.rank :: self.world_size].tolist())


def check_readable(unreadable: list[Unreadable], skip: bool) -> int:
    """How many images were skipped; a TrainError naming the first unreadable one unless ``skip``."""
    if unreadable and not skip:
        first = unreadable[0]
        raise TrainError(
            first.reason, hint="--skip-unreadable skips images that cannot be decoded, and counts them"
        )
    return len(unreadable)


@dataclass(frozen=True)
class Split:
    """One split of a data set and the class names its labels index."""

    dataset: Dataset
    classes: tuple[str, ...]


def open_split(
    data: str,
    split: str,
    shape: Sequence[int],
    view: View,
    classes: Sequence[str] = (),
    num_classes: int = 10,
    val_split: float = 0.0,
) -> Split:
    """The ``split`` ("train" or "val") of ``data``: a folder, "digits" or "fake" (also "fake:N").

    ``classes`` fixes the class names' order (a validation split follows its training split); when empty,
    the sorted folder names give it, or ``num_classes`` for fake data. ``shape`` is the model's (C, H, W).
    With ``val_split`` F, a folder without ``val/`` gives F of each class's training images (the same
    ones every time) as its validation split, and the rest as its training split.
    """
    if data == "fake" or data.startswith("fake:") or data == "digits":
        if val_split:
            raise TrainError(f"--data {data} has its own validation split: drop --val-split")
        if data == "digits":
            return folder_split(digits_folder() / split, shape[0], view, classes)
        return fake_split(data, split, shape, view, classes or [str(index) for index in range(num_classes)])
    root = Path(data)
    if not val_split:
        if split == "val" and (root / "train").is_dir() and not (root / "val").is_dir():
            raise TrainError(
                f"data folder {root} has no val/ folder",
                hint="hold out part of the training images for validation: --val-split 0.1",
            )
        return folder_split(root / split, shape[0], view, classes)
    if (root / "val").is_dir():
        raise TrainError(f"data folder {root} has a val/ folder: --val-split is for a folder without one")
    found, samples = folder_samples(root / "train", classes)
    train, val = hold_out(samples, val_split)
    return Split(FolderImages(train if split == "train" else val, shape[0], view), found)


def open_eval_split(
    data: str, shape: Sequence[int], view: View, classes: Sequence[str], val_split: float = 0.0
) -> Split:
    """What ``incdsl eval`` evaluates on: ``DIR/val``, the held-out part of ``DIR/train`` (``val_split``),
    or, for a folder with neither ``val/`` nor ``train/``, the folder's own class folders."""
    root = Path(data)
    folder = not (data in ("digits", "fake") or data.startswith("fake:"))
    if folder and not val_split and not (root / "val").is_dir() and not (root / "train").is_dir():
        return folder_split(root, shape[0], view, classes)
    return open_split(data, "val", shape, view, classes, val_split=val_split)


def hold_out(samples: list[tuple[Path, int]], fraction: float):
    """(training, validation) samples: ``fraction`` of each class's images, at least one of a class
    with two or more, drawn by a fixed shuffle (the same split in every run and in incdsl eval)."""
    import random

    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        members = list(by_class[label])
        random.Random(label).shuffle(members)
        count = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        val += sorted(members[:count])
        train += sorted(members[count:])
    if not val:
        raise TrainError("--val-split: no class has two images, so none can be held out for validation")
    return train, val


def folder_split(root: Path, channels: int, view: View, classes: Sequence[str] = ()) -> Split:
    found, samples = folder_samples(root, classes)
    return Split(FolderImages(samples, channels, view), found)


def folder_samples(root: Path, classes: Sequence[str] = ()) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The class names (``classes``, or the sorted folder names) and the (image, class index) pairs."""
    if not root.is_dir():
        raise TrainError(
            f"data folder {root} does not exist", hint="expected DIR/train/<class>/*.png and DIR/val"
        )
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not found:
        raise TrainError(f"data folder {root} has no class folders", hint=f"expected {root}/<class>/*.png")
    unknown = set(found) - set(classes) if classes else set()
    if unknown:
        raise TrainError(f"{root} has classes the model was not trained on: {', '.join(sorted(unknown))}")
    classes = tuple(classes or found)
    samples = [(path, classes.index(name)) for name in found for path in list_images(root / name)]
    if not samples:
        raise TrainError(
            f"data folder {root} holds no images", hint=f"suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return classes, samples


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder``: regular files only (a FIFO or a device named x.png would
    block or never end when read; a symlink to a regular file is followed)."""
    return sorted(
        path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def decode_image(path: Path, channels: int) -> Tensor:
    """The image at ``path`` as uint8 ``(channels, H, W)``, whatever its mode; a TrainError naming the
    file when it cannot be decoded, whatever Pillow raises (a damaged or truncated file, a format it does
    not know, an image over its decompression-bomb limit of Image.MAX_IMAGE_PIXELS pixels)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(PIL_MODES[channels]))
    except Image.DecompressionBombError:
        limit = f"{Image.MAX_IMAGE_PIXELS:,}"
        raise TrainError(
            f"cannot decode image {path}: it has more pixels than Pillow's limit of {limit}"
        ) from None
    except Exception as error:  # a decoder fails in many ways on a damaged file
        raise TrainError(f"cannot decode image {path}: {error or type(error).__name__}") from None
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy()).permute(2, 0, 1)


def fake_split(data: str, split: str, shape: Sequence[int], view: View, classes: Sequence[str]) -> Split:
    """Random images and labels, the same for every call: for smoke tests and benchmarks."""
    try:
        count = numbers.read_int(data.partition(":")[2] or str(FAKE_TRAIN_IMAGES), 1, MAX_FAKE_IMAGES)
    except numbers.NumberError as error:
        raise TrainError(
            f"--data {data}: {error}", hint="write fake, or fake:N for N training images"
        ) from None
    count = count if split == "train" else max(1, count // 4)
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, len(classes), (count,), generator=generator)
    return Split(TensorImages(images, labels, view), tuple(classes))


def cache_dir() -> Path:
    """Where incdsl keeps generated data: ``$INCDSL_CACHE``, else ``$XDG_CACHE_HOME/incdsl``, else
    ``~/.cache/incdsl`` (the parser's tables live there too, see incdsl.usercache)."""
    from incdsl.usercache import user_cache_dir

    return user_cache_dir()


def digits_folder() -> Path:
    """scikit-learn's 1797 8x8 digits as an image folder in the cache, written on first use.

    The folder is written under a temporary name and renamed into place, so a reader never sees a half
    written one, and two processes (torchrun) writing it at once do not clash.
    """
    folder = cache_dir() / "digits"
    if folder.is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".digits.", suffix=".tmp", dir=folder.parent))  # ours alone
    except OSError as error:
        raise TrainError(f"cannot write the digits to {folder.parent}: {error.strerror or error}") from None
    try:
        write_digits(staging)
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 while writing; a folder's usual mode after
        staging.rename(folder)
    except OSError:  # another process got there first (or the rename is refused: the folder exists)
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not folder.is_dir():
        raise TrainError(f"cannot write the digits to {folder}: it exists and is not a folder")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_digits(root: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target)):
        split = "val" if index % DIGITS_VAL_EVERY == DIGITS_VAL_EVERY - 1 else "train"
        path = root / split / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
