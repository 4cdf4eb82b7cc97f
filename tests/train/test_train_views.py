"""Evaluation views (1, 10, 144 crops) and the training augmentation on batches."""

from __future__ import annotations

import math

import pytest
import torch

from incdsl.train.augment import augment_batch, crop_and_resize, distort_colors, sample_crop_boxes, to_input
from incdsl.train.recipes import RECIPES, Augment
from incdsl.train.views import eval_view, five_crops, three_squares, train_view


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
    assert views.shape == (crops, 3, 32, 32)
    assert views.dtype == torch.uint8


def test_ten_crops_are_corners_center_and_their_mirrors():
    views = eval_view(10, (32, 32))(ramp(200, 200))  # shorter side resized to 32 / 0.875 = 37
    assert torch.equal(views[5:], views[:5].flip(-1))
    top_left, top_right, bottom_left, bottom_right, center = views[:5]
    assert top_left[0, 0, 0] < center[0, 0, 0] < top_right[0, 0, 0]
    assert top_left[1, 0, 0] < center[1, 0, 0] < bottom_left[1, 0, 0]
    assert (top_right[1].int() - top_left[1].int()).abs().max() <= 1  # same rows
    assert (bottom_right[0].int() - top_right[0].int()).abs().max() <= 1  # same columns


def test_144_crops_cover_four_scales_three_squares_six_crops_mirrored():
    views = eval_view(144, (32, 32))(ramp(100, 150)).int()  # index: scale * 18 + square * 6 + crop
    assert torch.equal(views[72:], views[:72].flip(-1))
    for scale in range(4):
        wholes = [views[scale * 18 + square * 6 + 5] for square in range(3)]  # squares resized whole
        assert [whole[0, 0, 0].item() for whole in wholes] == pytest.approx([0, 25, 50], abs=3)
        assert [whole[0, 0, -1].item() for whole in wholes] == pytest.approx([99, 124, 149], abs=3)
    # a top-left crop of a larger scale sees less of the image: 32 of 256, 288, 320, 352 for a 224 input
    spans = [(views[scale * 18][0, 0, -1] - views[scale * 18][0, 0, 0]).item() for scale in range(4)]
    assert spans == pytest.approx([31 * 100 / side for side in (37, 41, 46, 50)], abs=2)


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
    assert torch.equal(eval_view(144, (32, 32), mirrors=False)(image), eval_view(144, (32, 32))(image)[:72])


def test_multi_crop_views_are_framed_as_the_one_crop():
    """A recipe that evaluates whole images (fraction 1.0) gets corner crops of the whole image: for a
    square image, the five crops are the image itself, not corners that cut the digit."""
    image = ramp(32, 32)
    one = eval_view(1, (32, 32), fraction=1.0)(image)
    ten = eval_view(10, (32, 32), fraction=1.0, mirrors=False)(image)
    assert all(torch.equal(view, one[0]) for view in ten)
    views = eval_view(144, (32, 32), fraction=1.0, mirrors=False)(image)
    assert all(torch.equal(view, one[0]) for view in views[:6])  # the smallest scale is the 1-crop's
    assert not torch.equal(views[18], one[0])  # the next (288/256) zooms in
