"""Image folders of any size and mode, the digits cache, fake data, and clear errors for bad folders."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from PIL import Image

from incdsl.train import TrainError
from incdsl.train.data import Unreadable, check_readable, collate, digits_folder, open_split
from incdsl.train.views import eval_view, train_view

READ = partial(train_view, size=(32, 32))


def test_folder_of_mixed_images_reads_at_the_input_shape(color_folder):
    split = open_split(str(color_folder), "train", (3, 32, 32), READ)
    assert split.classes == ("blue", "green", "red")
    assert len(split.dataset) == 36
    for index in range(4):  # RGB png, RGBA png, palette png, jpg; all sizes
        image, label = split.dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert label == 0
        assert image[2].float().mean() > 150 and image[0].float().mean() < 80  # blue


def test_single_channel_models_read_grayscale(color_folder):
    image, _ = open_split(str(color_folder), "val", (1, 24, 20), partial(train_view, size=(24, 20))).dataset[
        0
    ]
    assert image.shape == (1, 24, 20)


def test_validation_follows_the_training_classes(color_folder):
    split = open_split(
        str(color_folder), "val", (3, 32, 32), eval_view(10, (32, 32)), ("red", "green", "blue")
    )
    image, label = split.dataset[0]
    assert image.shape == (10, 3, 32, 32)
    assert label == 2  # the first folder read is blue, the third class given
    with pytest.raises(TrainError, match="classes the model was not trained on: red"):
        open_split(str(color_folder), "val", (3, 32, 32), READ, ("blue", "green"))


def test_missing_folder(tmp_path):
    with pytest.raises(TrainError, match="does not exist") as caught:
        open_split(str(tmp_path), "train", (3, 32, 32), READ)
    assert "DIR/train/<class>" in caught.value.hint


def test_folder_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(TrainError, match="has no class folders"):
        open_split(str(tmp_path), "train", (3, 32, 32), READ)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(TrainError, match="holds no images"):
        open_split(str(tmp_path), "train", (3, 32, 32), READ)


def test_undecodable_image_names_its_file(tmp_path):
    broken = tmp_path / "train" / "cat" / "broken.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    split = open_split(str(tmp_path), "train", (3, 32, 32), READ)
    image, label = split.dataset[0]  # a worker hands the failure to the training process, which reports it
    assert isinstance(image, Unreadable) and image.path == str(broken) and label == 0
    with pytest.raises(TrainError, match="cannot decode image .*broken.png") as error:
        check_readable(collate([split.dataset[0]])[2], skip=False)
    assert "--skip-unreadable" in error.value.hint
    assert check_readable(collate([split.dataset[0]])[2], skip=True) == 1


def test_digits_written_once_with_a_fixed_split(digits, cache):
    folder = digits_folder()
    assert folder == cache / "digits"
    train = open_split(digits, "train", (3, 32, 32), READ)
    val = open_split(digits, "val", (3, 32, 32), READ, train.classes)
    assert (len(train.dataset), len(val.dataset)) == (1438, 359)
    assert train.classes == tuple(str(digit) for digit in range(10))
    first_val = sorted((folder / "val").rglob("*.png"))[0]
    with Image.open(first_val) as image:
        assert image.size == (8, 8) and image.mode == "L"
    stamp = os.stat(first_val).st_mtime_ns
    assert digits_folder() == folder and os.stat(first_val).st_mtime_ns == stamp
    image, _ = val.dataset[0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[1])


def test_fake_data_is_deterministic():
    first = open_split("fake:20", "train", (3, 16, 16), partial(train_view, size=(16, 16)), num_classes=4)
    again = open_split("fake:20", "train", (3, 16, 16), partial(train_view, size=(16, 16)), num_classes=4)
    val = open_split("fake:20", "val", (3, 16, 16), eval_view(1, (16, 16), 1.0), first.classes)
    assert len(first.dataset) == 20 and len(val.dataset) == 5
    assert first.classes == ("0", "1", "2", "3")
    assert torch.equal(first.dataset[7][0], again.dataset[7][0])
    assert val.dataset[0][0].shape == (1, 3, 16, 16)
    with pytest.raises(TrainError, match="fake:N"):
        open_split("fake:many", "train", (3, 16, 16), READ)
