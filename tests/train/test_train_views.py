"""Evaluation views (1, 10, 144 crops) and the training augmentation on batches."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from incdsl.train.augment import augment_batch, crop_and_resize, distort_colors, sample_crop_boxes, to_input
from incdsl.train.recipes import RECIPES, Augment
from incdsl.train.views import (
    BORDER,
    ViewsError,
    center_crop,
    distinct_views,
    eval_view,
    five_crops,
    parse_views,
    resize_to_cover,
    three_squares,
    train_view,
    view_regions,
)


def ramp(height: int, width: int, channels: int = 3) -> torch.Tensor:
    """An image whose pixels tell where they are: value = column (mod 256), channel 1 = row."""
    image = torch.zeros(channels, height, width, dtype=torch.uint8)
    image[0] = torch.arange(width, dtype=torch.uint8)[None, :]
    image[1] = torch.arange(height, dtype=torch.uint8)[:, None]
    return image


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (32, 32), (8, 8)])
@pytest.mark.parametrize("crops", [1, 10, 144])
def test_eval_views_count(shape, crops):
    views = eval_view(crops, (32, 32), 0.875)(ramp(*shape))
    regions = view_regions(*shape, (32, 32), 0.875, parse_views(crops))
    assert views.shape == (len(regions) * (1 if crops == 1 else 2), 3, 32, 32)
    assert views.dtype == torch.uint8
    assert len(views) == (crops if crops < 144 else 42 if shape[0] == shape[1] else len(views))
    assert distinct_views(views) == len(views)


def test_ten_crops_are_center_corners_and_their_mirrors():
    views = eval_view(10, (32, 32))(ramp(200, 200))  # shorter side resized to 32 / 0.875 = 37
    assert torch.equal(views[5:], views[:5].flip(-1))
    center, top_left, top_right, bottom_left, bottom_right = views[:5]
    assert top_left[0, 0, 0] < center[0, 0, 0] < top_right[0, 0, 0]
    assert top_left[1, 0, 0] < center[1, 0, 0] < bottom_left[1, 0, 0]
    assert (top_right[1].int() - top_left[1].int()).abs().max() <= 1  # same rows
    assert (bottom_right[0].int() - top_right[0].int()).abs().max() <= 1  # same columns


def test_144_crops_cover_four_scales_three_squares_and_each_region_once():
    image = ramp(100, 150)
    views = eval_view(144, (32, 32))(image).int()
    regions = view_regions(100, 150, (32, 32), 0.875, parse_views(144))
    assert len(views) == 2 * len(regions) == distinct_views(views.to(torch.uint8))
    assert len(views) == 126  # 144 less the squares resized whole at 3 more scales, mirrored
    assert torch.equal(views[63:], views[:63].flip(-1))
    wholes = [views[index] for index, key in enumerate(regions) if key[0] == "square"]
    assert len(wholes) == 3  # each square resized whole once, not once per scale
    assert [whole[0, 0, 0].item() for whole in wholes] == pytest.approx([0, 25, 50], abs=3)
    assert [whole[0, 0, -1].item() for whole in wholes] == pytest.approx([99, 124, 149], abs=3)
    # a top-left crop of a larger scale sees less of the image: 32 of 256, 288, 320, 352 for a 224 input
    firsts = [index for index, key in enumerate(regions) if key[0] == "cover" and key[2:] == (0, 0)]
    spans = [(views[index][0, 0, -1] - views[index][0, 0, 0]).item() for index in firsts]
    assert spans == pytest.approx([31 * 100 / side for side in (37, 41, 46, 50)], abs=2)


def test_144_crops_of_a_large_enough_image_are_distinct_and_fewer_when_not():
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for fraction in (1.0, 0.875):  # the fast recipe's whole-image evaluation and the papers' crop
        views = eval_view(144, (32, 32), fraction)(image)
        assert len(views) == distinct_views(views) == 126  # the paper's 144 less 18 repeated squares
        unmirrored = eval_view(144, (32, 32), fraction, mirrors=False)(image)
        assert len(unmirrored) == distinct_views(unmirrored) == 63
    square = image[:, :, :64]  # three squares that are one
    views = eval_view(144, (32, 32), 1.0)(square)
    assert len(views) == distinct_views(views) == 42


def test_three_squares_and_five_crops():
    landscape = three_squares(ramp(10, 30))
    assert [square[0, 0, 0].item() for square in landscape] == [0, 10, 20]
    portrait = three_squares(ramp(30, 10))
    assert [square[1, 0, 0].item() for square in portrait] == [0, 10, 20]
    corners = five_crops(ramp(10, 10), (4, 4))
    assert [(c[1, 0, 0].item(), c[0, 0, 0].item()) for c in corners] == [
        (0, 0),
        (0, 6),
        (6, 0),
        (6, 6),
        (3, 3),
    ]


def test_center_view_keeps_the_middle():
    view = eval_view(1, (32, 32), 0.5)(ramp(64, 64))[0]  # 64 -> 64, center 32
    assert view[0, 0, 0] == 16 and view[1, 0, 0] == 16
    whole = eval_view(1, (32, 32), 1.0)(ramp(64, 64))[0]
    assert whole[0, 0, 0] <= 1 and whole[0, 0, -1] >= 62


def test_train_view_resizes_any_image_to_the_input():
    assert train_view(ramp(7, 300), (32, 32)).shape == (3, 32, 32)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_crop_boxes_follow_the_recipe(name):
    augment = RECIPES[name].augment
    boxes = sample_crop_boxes(4000, (32, 32), augment, torch.Generator().manual_seed(0))
    left, top, width, height = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + width <= 1 + 1e-6).all() and (top + height <= 1 + 1e-6).all()
    area, aspect = width * height, width / height
    whole = area > 1 - 1e-6
    assert (area[~whole] >= augment.crop_area[0] - 1e-6).all()
    assert (aspect[~whole] >= augment.crop_aspect[0] - 1e-6).all()
    assert (aspect[~whole] <= augment.crop_aspect[1] + 1e-6).all()
    assert whole.float().mean() < 0.05 or augment.crop_area[0] > 0.5


def test_inception_crop_areas_spread_over_8_to_100_percent():
    boxes = sample_crop_boxes(4000, (32, 32), Augment(), torch.Generator().manual_seed(0))
    area = boxes[:, 2] * boxes[:, 3]
    assert area.min() < 0.1 and area.max() > 0.9
    assert math.isclose(area.median().item(), 0.5, abs_tol=0.1)


def test_whole_box_is_the_identity_and_flip_mirrors():
    pixels = torch.rand(2, 3, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    same = crop_and_resize(pixels, whole, torch.tensor([False, True]))
    assert torch.allclose(same[0], pixels[0], atol=1e-5)
    assert torch.allclose(same[1], pixels[1].flip(-1), atol=1e-5)


def test_crop_takes_the_box():
    pixels = torch.arange(16.0).view(1, 1, 4, 4)
    right_half = crop_and_resize(pixels, torch.tensor([[0.5, 0.0, 0.5, 1.0]]), torch.tensor([False]))
    assert right_half[0, 0, 0, 0] > pixels[0, 0, 0, 1] and right_half[0, 0, 0, -1] == pytest.approx(3.0)


def test_photometric_distortion_changes_colours_within_range():
    pixels = torch.rand(16, 3, 8, 8)
    distorted = distort_colors(pixels.clone(), 0.4, torch.Generator().manual_seed(0))
    assert not torch.allclose(distorted, pixels)
    assert distorted.min() >= 0 and distorted.max() <= 1
    gray = torch.rand(4, 1, 8, 8)
    assert distort_colors(gray.clone(), 0.4, torch.Generator().manual_seed(0)).shape == gray.shape


def test_augment_batch_is_seeded_and_in_the_input_range():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    first = augment_batch(images, Augment(), torch.Generator().manual_seed(3))
    again = augment_batch(images, Augment(), torch.Generator().manual_seed(3))
    other = augment_batch(images, Augment(), torch.Generator().manual_seed(4))
    assert first.shape == (8, 3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= -1 and first.max() <= 1


def test_no_augmentation_is_just_the_normalisation():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plain = Augment(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip=False, photometric=0.0)
    result = augment_batch(images, plain, torch.Generator().manual_seed(0))
    assert torch.allclose(result, to_input(images), atol=1e-5)


def test_views_without_flip_training_have_no_mirrors():
    image = ramp(40, 50)
    assert torch.equal(eval_view(10, (32, 32), mirrors=False)(image), eval_view(10, (32, 32))(image)[:5])
    mirrored = eval_view(144, (32, 32))(image)
    assert torch.equal(eval_view(144, (32, 32), mirrors=False)(image), mirrored[: len(mirrored) // 2])


@pytest.mark.parametrize("flips", [True, False])
@pytest.mark.parametrize("fraction", [1.0, 0.875])
def test_ten_crops_are_ten_distinct_views_with_flips_and_five_without(flips, fraction):
    """10 crops of a recipe that evaluates whole images (fast: fraction 1) are not 5 copies of one
    view: the corners come from the frame enlarged by 1/0.875, the center is the 1-crop view."""
    for image in (ramp(32, 32), ramp(8, 8), ramp(64, 128)):
        views = eval_view(10, (32, 32), fraction, mirrors=flips)(image)
        assert len(views) == distinct_views(views) == (10 if flips else 5)
        assert torch.equal(views[0], eval_view(1, (32, 32), fraction)(image)[0])


def test_views_are_chosen_by_name():
    image = ramp(64, 128)
    parts = eval_view("center,corners,mirror", (32, 32), 1.0, mirrors=False)(image)
    assert len(parts) == distinct_views(parts) == 10  # a list that names mirror gets mirrors
    assert len(eval_view("corners", (32, 32), 1.0)(image)) == 4
    assert len(eval_view("squares", (32, 32), 1.0)(image)) == 63
    assert len(eval_view("1", (32, 32), 1.0)(image)) == 1
    for wrong in ("5", "centre", "", "mirror"):
        with pytest.raises(ViewsError):
            parse_views(wrong)


# -- one framing for training and evaluation -----------------------------------------------------------


def spot(height: int, width: int, top: int, left: int, side: int = 16) -> torch.Tensor:
    """A black image with a white square of ``side`` at (top, left)."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[:, top : top + side, left : left + side] = 255
    return image


def white(pixels: torch.Tensor) -> int:
    """How many pixels are nearly white (the spot, resized)."""
    return int((pixels.float().mean(dim=-3) > 160).sum())


@pytest.mark.parametrize(
    "image",
    [spot(64, 128, 24, 12), spot(64, 128, 24, 100), spot(128, 64, 12, 24), spot(128, 64, 100, 24)],
    ids=["left", "right", "top", "bottom"],
)
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_an_object_near_a_side_is_in_both_the_training_and_the_evaluation_view(image, name):
    augment = RECIPES[name].augment
    framed = train_view(image, (32, 32))
    assert white(framed) >= 9  # a 16-pixel square of a 128-pixel side is 4 of 32
    # every training crop at full scale (the default range's top: the whole frame) holds it
    whole = replace(augment, crop_area=(1.0, 1.0), photometric=0.0)
    crops = augment_batch(framed[None].expand(64, -1, -1, -1), whole, torch.Generator().manual_seed(0))
    assert all(white((crop + 1) * 127.5) >= 4 for crop in crops)
    evaluated = eval_view(1, (32, 32), augment.eval_crop)(image)[0]
    assert white(evaluated) >= 4
    # the shorter side resized to the frame and its center cropped, as evaluation did, loses it
    old = center_crop(resize_to_cover(image, (round(32 / augment.eval_crop),) * 2), (32, 32))
    assert white(old) == 0


def test_training_and_evaluation_frame_an_image_alike():
    """Training's frame at full scale and the whole-image evaluation are the same pixels; a square
    image has no border."""
    image = ramp(64, 128)
    assert torch.equal(train_view(image, (32, 32)), eval_view(1, (32, 32), 1.0)(image)[0])
    assert (train_view(image, (32, 32))[:, :8] == BORDER).all()  # 32x16 of image, 8 rows above it
    assert not (train_view(ramp(48, 48), (32, 32)) == BORDER).all(dim=0).any()
