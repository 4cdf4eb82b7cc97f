"""Per-image views, computed as a data set reads each image: uint8 ``(C, h, w)`` in, uint8 out.

**One framing for training and evaluation: the whole image, aspect ratio kept (letterbox).** An image
is resized, its aspect ratio kept, so that it fits the model's input, and centred on a mid-grey border
(value 128, which is 0 in the network's [-1, 1] input range, what a convolution's zero padding sees).
Training reads that frame and takes its random crops from it (augment.py); evaluation reads the same
frame, enlarged by 1 / ``fraction`` (the recipe's evaluation crop) and centre-cropped to the input: for
a square image this is the usual resize-and-centre-crop, and for a 128x64 image an object near a side
is inside both views (a crop of the shorter-side resize, or a squashed whole image, would cut it or
deform it for one of them). A square image has no border.

Evaluation reads a stack of views ``(V, C, H, W)``, whose softmax outputs are averaged. The views are
chosen by name (``ViewSet``), and each view of an image is a distinct region of it (or its mirror):
two views that would show the same region at the same scale are one.

- ``center``: the 1-crop view above.
- ``corners``: the four corner crops of the input's size from the frame enlarged by 1 / 0.875 (the
  papers' 224 of 256; by 1 / ``fraction`` when that is larger), so that a recipe that evaluates whole
  images still has four corners that differ from its centre.
- ``squares``: GoogLeNet's 144 crops (section 7): the image resized, aspect ratio kept, so that its
  shorter side is 256, 288, 320 and 352 (for a 224 input; scaled to others), the left, centre and
  right squares (top, centre and bottom for a portrait image), from each the 4 corners and the centre
  crop of the input's size, and the square resized to the input. The paper resizes each square whole
  at each of the 4 scales, which is the same region 4 times (only resampled differently): it is taken
  once, so the paper's 4 x 3 x 6 = 72 crops are 3 x (4 x 5 + 1) = 63 distinct regions (144 with
  mirrors: 126). The three squares of a square image are one square (21 regions).
- ``mirror``: each view and its mirror image.

``1`` is ``center``; ``10`` is ``center,corners,mirror`` and ``144`` is ``squares,mirror``, where the
mirrors are only there for a model trained with flips (a model that never saw a mirrored digit is not
asked about one): 10 crops are then 5 views, 144 are 63 (21 for a square image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_INPUT = 224
PAPER_SCALES = (256, 288, 320, 352)  # shorter sides of the 144-crop evaluation, for a 224 input
TEN_CROP_FRACTION = PAPER_INPUT / PAPER_SCALES[0]
BORDER = 128  # the letterbox's grey: 0 in the network's input range

Size = tuple[int, int]


def resize(image: Tensor, size: Size) -> Tensor:
    """``image`` resized to ``size`` (height, width), antialiased."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def fit_size(height: int, width: int, size: Size) -> Size:
    """The largest size of an image of ``height x width``, aspect ratio kept, that fits in ``size``."""
    scale = min(size[0] / height, size[1] / width)
    return (min(size[0], max(1, round(height * scale))), min(size[1], max(1, round(width * scale))))


def letterbox(image: Tensor, size: Size) -> Tensor:
    """The whole of ``image``, aspect ratio kept, resized to fit in ``size`` and centred on a grey
    border (none for an image of the same aspect ratio)."""
    fitted = resize(image, fit_size(*image.shape[-2:], size))
    if tuple(fitted.shape[-2:]) == tuple(size):
        return fitted
    framed = torch.full((*image.shape[:-2], *size), BORDER, dtype=torch.uint8)
    top, left = (size[0] - fitted.shape[-2]) // 2, (size[1] - fitted.shape[-1]) // 2
    framed[..., top : top + fitted.shape[-2], left : left + fitted.shape[-1]] = fitted
    return framed


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


def corner_offsets(frame: Size, size: Size) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops of ``size`` in ``frame``, then of the centre crop."""
    bottom, right = frame[0] - size[0], frame[1] - size[1]
    return [(top, left) for top in (0, bottom) for left in (0, right)] + [(bottom // 2, right // 2)]


def five_crops(image: Tensor, size: Size) -> list[Tensor]:
    """The four corner crops and the center crop."""
    return [crop(image, top, left, size) for top, left in corner_offsets(image.shape[-2:], size)]


def square_offsets(height: int, width: int) -> list[int]:
    """Offsets along the longer side of the first (left or top), centre and last squares."""
    extra = max(height, width) - min(height, width)
    return [0, extra // 2, extra]


def three_squares(image: Tensor) -> list[Tensor]:
    """Left, center and right squares of a landscape image; top, center and bottom of a portrait one."""
    height, width = image.shape[-2:]
    side = min(height, width)
    offsets = square_offsets(height, width)
    if width >= height:
        return [crop(image, 0, offset, (side, side)) for offset in offsets]
    return [crop(image, offset, 0, (side, side)) for offset in offsets]


def enlarged(size: Size, fraction: float) -> Size:
    return (round(size[0] / fraction), round(size[1] / fraction))


def train_view(image: Tensor, size: Size) -> Tensor:
    """What training reads: the whole image in the input's frame (letterbox); crops come later."""
    return letterbox(image, size)


# -- evaluation views -------------------------------------------------------------------------------

PARTS = ("center", "corners", "squares", "mirror")
SQUARE_REGIONS = 3 * (len(PAPER_SCALES) * 5 + 1)  # 63: the 144 crops' distinct regions, unmirrored
NAMED = {"1": ("center",), "10": ("center", "corners", "mirror"), "144": ("squares", "mirror")}


class ViewsError(ValueError):
    """A --views value that names no views."""


@dataclass(frozen=True)
class ViewSet:
    """Which views evaluation takes of each image. ``mirror`` None: mirrors when the model was
    trained with flips (the counts 10 and 144); True or False: as asked (a list that names it)."""

    center: bool = True
    corners: bool = False
    squares: bool = False
    mirror: bool | None = False
    name: str = "1"

    def mirrored(self, flips: bool) -> bool:
        return flips if self.mirror is None else self.mirror

    def most(self, flips: bool = True) -> int:
        """The number of views of an image large enough (and not square) for all to be distinct."""
        count = self.center + 4 * self.corners + SQUARE_REGIONS * self.squares
        return count * (2 if self.mirrored(flips) else 1)


def parse_views(text: str | int) -> ViewSet:
    """``1``, ``10``, ``144`` or a comma-separated list of center, corners, squares, mirror.

    >>> parse_views("10").most(flips=False), parse_views("10").most(flips=True)
    (5, 10)
    >>> parse_views("center,corners").most()
    5
    """
    text = str(text).strip()
    if text in NAMED:
        parts = set(NAMED[text])
        mirror = None if "mirror" in parts else False
    else:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in PARTS]
        if unknown or not names:
            raise ViewsError(
                f"unknown view '{unknown[0] if unknown else text}': write 1, 10, 144 or a list of "
                f"{', '.join(PARTS)} (like center,corners,mirror)"
            )
        parts = set(names)
        if parts == {"mirror"}:
            raise ViewsError("views 'mirror' alone mirror nothing: add center, corners or squares")
        mirror = "mirror" in parts
    return ViewSet("center" in parts, "corners" in parts, "squares" in parts, mirror, text)


def view_regions(height: int, width: int, size: Size, fraction: float, views: ViewSet) -> list[tuple]:
    """The distinct regions ``views`` takes of a ``height x width`` image, as keys that say how each is
    made: ("box", frame, top, left), a crop of the letterboxed frame; ("cover", side, top, left), a
    crop of the image resized to cover side x side (a corner or the centre of one of its squares);
    ("square", offset), a square of the image resized to the input. Two views with the same key are
    the same region: one is kept (a corner of one square can be a corner of the next)."""
    regions: list[tuple] = []
    if views.center:
        frame = enlarged(size, fraction)
        top, left = corner_offsets(frame, size)[4]
        regions.append(("box", frame, top, left))
    if views.corners:
        frame = enlarged(size, min(fraction, TEN_CROP_FRACTION))
        regions += [("box", frame, top, left) for top, left in corner_offsets(frame, size)[:4]]
    if views.squares:
        base = max(size) / min(fraction, TEN_CROP_FRACTION)
        for scale in PAPER_SCALES:
            side = round(base * scale / PAPER_SCALES[0])
            cover = (side, side)
            scale_by = max(side / height, side / width)
            covered = (max(side, round(height * scale_by)), max(side, round(width * scale_by)))
            landscape = covered[1] >= covered[0]
            for offset, whole in zip(square_offsets(*covered), square_offsets(height, width)):
                down, across = (0, offset) if landscape else (offset, 0)
                regions += [
                    ("cover", side, down + top, across + left) for top, left in corner_offsets(cover, size)
                ]
                regions.append(("square", whole))  # the same region at every scale: once
    return list(dict.fromkeys(regions))  # distinct, in order


def take_views(image: Tensor, size: Size, fraction: float, views: ViewSet, mirrors: bool) -> Tensor:
    """The stack of ``image``'s distinct views (their mirror images after them when ``mirrors``)."""
    frames: dict[tuple, Tensor] = {}
    taken = []
    for key in view_regions(*image.shape[-2:], size, fraction, views):
        if key[0] == "box":
            frame = frames.setdefault(("box", key[1]), letterbox(image, key[1]))
            taken.append(crop(frame, key[2], key[3], size))
            continue
        if key[0] == "square":  # the image's square resized to the input, from the image itself
            landscape = image.shape[-1] >= image.shape[-2]
            side = min(image.shape[-2:])
            top, left = (0, key[1]) if landscape else (key[1], 0)
            taken.append(resize(crop(image, top, left, (side, side)), size))
            continue
        if ("cover", key[1]) not in frames:
            frames["cover", key[1]] = resize_to_cover(image, (key[1], key[1]))
        taken.append(crop(frames["cover", key[1]], key[2], key[3], size))
    stacked = torch.stack(taken)
    return torch.cat([stacked, stacked.flip(-1)]) if mirrors else stacked


def center_view(image: Tensor, size: Size, fraction: float) -> Tensor:
    """The 1-crop view: the letterboxed frame enlarged by 1 / ``fraction``, its centre."""
    return center_crop(letterbox(image, enlarged(size, fraction)), size)[None]


def view_count(crops: int | str | ViewSet, mirrors: bool = True) -> int:
    """The most views an image gets from ``crops`` (1, 10, 144, a list, or a ViewSet): half as many
    without mirrors (1 stays 1)."""
    views = crops if isinstance(crops, ViewSet) else parse_views(crops)
    return views.most(flips=mirrors)


def eval_view(
    crops: int | str | ViewSet,
    size: Size,
    fraction: float = TEN_CROP_FRACTION,
    mirrors: bool = True,
) -> Callable[[Tensor], Tensor]:
    """The view function for ``crops`` (1, 10, 144, a list of parts, or a ViewSet), framed as the 1-crop
    is (``fraction``, the recipe's evaluation crop); with 10 or 144, mirrored only when ``mirrors``
    (flip training).

    >>> eval_view(10, (32, 32))(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([10, 3, 32, 32])
    >>> eval_view(10, (32, 32), fraction=1.0, mirrors=False)(torch.zeros(3, 40, 50, dtype=torch.uint8)).shape
    torch.Size([5, 3, 32, 32])
    """
    views = crops if isinstance(crops, ViewSet) else parse_views(crops)
    if views.center and not views.corners and not views.squares and not views.mirrored(mirrors):
        return partial(center_view, size=size, fraction=fraction)
    return partial(take_views, size=size, fraction=fraction, views=views, mirrors=views.mirrored(mirrors))


def distinct_views(views: Tensor) -> int:
    """How many of a stack of views differ from every other (pixel for pixel)."""
    return len({bytes(view.contiguous().numpy()) for view in views})
