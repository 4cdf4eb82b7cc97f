"""Per-image views, computed as a data set reads each image: uint8 ``(C, h, w)`` in, uint8 out.

Training reads every image resized to the model's input (the random crops happen later, on batches, on
the device: see augment.py). Evaluation reads a stack of views ``(V, C, H, W)``, whose softmax outputs
are averaged:

- 1 crop: resize, keeping the aspect ratio, so that a center crop of ``fraction`` of it is the input.
- 10 crops: resize the same way (the shorter side to input / 0.875, 256 for 224, in the papers), take
  the 4 corners and the center, and their mirror images.
- 144 crops (GoogLeNet, section 7): resize the shorter side to 256, 288, 320 and 352 (for a 224 input
  and the papers' 0.875 framing; scaled to others: the smallest scale is the 1-crop's), take the left,
  center and right squares (top, center and bottom for portrait images), from each the 4 corner and the
  center crops of the input size and the square resized to it, and all of these mirrored:
  4 * 3 * 6 * 2 = 144.

The views follow the training recipe (``Augment``): ``fraction`` is its evaluation crop, so a recipe that
evaluates whole images (the digits demo's) gets corner crops of the whole image, not of an enlarged one
that cuts the digit; and without flip training there are no mirrored views (a model that never saw a
mirrored digit is not asked about one): 10 crops are then 5 views, 144 are 72.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_INPUT = 224
PAPER_SCALES = (256, 288, 320, 352)  # shorter sides of the 144-crop evaluation, for a 224 input
TEN_CROP_FRACTION = PAPER_INPUT / PAPER_SCALES[0]

Size = tuple[int, int]


def resize(image: Tensor, size: Size) -> Tensor:
    """``image`` resized to ``size`` (height, width), antialiased."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_to_cover(image: Tensor, size: Size) -> Tensor:
    """``image`` resized, aspect ratio kept, to the smallest size covering ``size``."""
    height, width = image.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    return resize(image, (max(size[0], round(height * scale)), max(size[1], round(width * scale))))


def crop(image: Tensor, top: int, left: int, size: Size) -> Tensor:
    return image[..., top : top + size[0], left : left + size[1]]


def center_crop(image: Tensor, size: Size) -> Tensor:
    height, width = image.shape[-2:]
    return crop(image, (height - size[0]) // 2, (width - size[1]) // 2, size)


def five_crops(image: Tensor, size: Size) -> list[Tensor]:
    """The four corner crops and the center crop."""
    bottom, right = image.shape[-2] - size[0], image.shape[-1] - size[1]
    corners = [crop(image, top, left, size) for top in (0, bottom) for left in (0, right)]
    return [*corners, center_crop(image, size)]


def three_squares(image: Tensor) -> list[Tensor]:
    """Left, center and right squares of a landscape image; top, center and bottom of a portrait one."""
    height, width = image.shape[-2:]
    side = min(height, width)
    offsets = (0, (max(height, width) - side) // 2, max(height, width) - side)
    if width >= height:
        return [crop(image, 0, offset, (side, side)) for offset in offsets]
    return [crop(image, offset, 0, (side, side)) for offset in offsets]


def with_mirrors(views: list[Tensor], mirrors: bool = True) -> Tensor:
    stacked = torch.stack(views)
    return torch.cat([stacked, stacked.flip(-1)]) if mirrors else stacked


def train_view(image: Tensor, size: Size) -> Tensor:
    return resize(image, size)


def center_view(image: Tensor, size: Size, fraction: float) -> Tensor:
    enlarged = (round(size[0] / fraction), round(size[1] / fraction))
    return center_crop(resize_to_cover(image, enlarged), size)[None]


def ten_crop_view(
    image: Tensor, size: Size, fraction: float = TEN_CROP_FRACTION, mirrors: bool = True
) -> Tensor:
    enlarged = (round(size[0] / fraction), round(size[1] / fraction))
    return with_mirrors(five_crops(resize_to_cover(image, enlarged), size), mirrors)


def multi_crop_view(
    image: Tensor, size: Size, fraction: float = TEN_CROP_FRACTION, mirrors: bool = True
) -> Tensor:
    views = []
    for scale in PAPER_SCALES:
        side = round(max(size) / fraction * scale / PAPER_SCALES[0])
        for square in three_squares(resize_to_cover(image, (side, side))):
            views += [*five_crops(square, size), resize(square, size)]
    return with_mirrors(views, mirrors)


def view_count(crops: int, mirrors: bool = True) -> int:
    """How many views ``crops`` evaluation crops are: half as many without mirrors (1 stays 1)."""
    return crops if mirrors or crops == 1 else crops // 2


def eval_view(
    crops: int, size: Size, fraction: float = TEN_CROP_FRACTION, mirrors: bool = True
) -> Callable[[Tensor], Tensor]:
    """The view function for ``crops`` evaluation crops (1, 10 or 144), framed as the 1-crop is
    (``fraction``, the recipe's evaluation crop) and mirrored only when ``mirrors`` (flip training).

    >>> eval_view(10, (32, 32))(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([10, 3, 32, 32])
    >>> eval_view(10, (32, 32), fraction=1.0, mirrors=False)(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([5, 3, 32, 32])
    """
    if crops == 1:
        return partial(center_view, size=size, fraction=fraction)
    if crops == 10:
        return partial(ten_crop_view, size=size, fraction=fraction, mirrors=mirrors)
    if crops == 144:
        return partial(multi_crop_view, size=size, fraction=fraction, mirrors=mirrors)
    raise ValueError(f"crops must be 1, 10 or 144, not {crops}")
