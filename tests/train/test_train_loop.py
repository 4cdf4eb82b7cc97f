"""The training loop: it learns, logs, checkpoints, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from incdsl.train import Interrupted, TrainError
from incdsl.train import loop as loop_module
from incdsl.train.checkpoint import load_checkpoint
from incdsl.train.cli import main
from incdsl.train.config import make_config
from incdsl.train.data import collate, open_split
from incdsl.train.distributed import start_processes
from incdsl.train.evaluate import evaluate
from incdsl.train.logs import read_metrics
from incdsl.train.loop import train, training_loss
from incdsl.train.recipes import RECIPES
from incdsl.train.views import eval_view

KEYS = {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s"}


def config(tiny_model, out, **options):
    return make_config({"target": tiny_model, "out": out, "data": "fake:32", "batch_size": 8, **options})


def without_speed(history):
    return [{key: value for key, value in record.items() if key != "img_per_s"} for record in history]


@pytest.fixture(scope="module")
def digits_run(tiny_model, digits, tmp_path_factory):
    """Two epochs of the fast recipe on the digits: the run directory and its history."""
    out = tmp_path_factory.mktemp("digits") / "run"
    history = train(config(tiny_model, out, data=digits, epochs=2, batch_size=32))
    return out, history


def test_loss_falls_and_accuracy_is_well_above_chance(digits_run):
    _, (first, last) = digits_run
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < first["val_loss"] < math.log(10)
    assert last["val_top1"] > 0.5  # chance is 0.1
    assert last["val_top5"] > 0.9


def test_metrics_file_has_one_record_per_epoch(digits_run):
    out, history = digits_run
    records = read_metrics(out)
    assert records == history
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert KEYS <= set(record)
        assert 0 <= record["val_top1"] <= record["val_top5"] <= 1
        assert record["lr"] > 0 and record["img_per_s"] > 0


def test_checkpoint_holds_the_whole_state(digits_run, tiny_model):
    out, history = digits_run
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["metrics"] == history
    assert {"model", "optimizer", "scheduler", "ema", "rng", "config", "classes"} <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["model_source"] == open(tiny_model).read()
    assert state["scheduler"]["last_epoch"] == 2 * (1438 // 32)
    best = load_checkpoint(out / "best.pt")
    assert best["metrics"][-1]["val_top1"] == max(record["val_top1"] for record in history)


def test_eval_of_the_checkpoint_matches_the_last_epoch(digits_run, tiny_model, digits, capsys):
    out, history = digits_run
    assert (
        main(["eval", tiny_model, "--checkpoint", str(out / "checkpoint.pt"), "--data", digits, "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == history[-1]["val_top1"] and result["images"] == 359
    assert result["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-4)


def test_ten_crop_ensemble_eval(digits_run, tiny_model, digits, capsys):
    out, _ = digits_run
    checkpoints = ["--checkpoint", str(out / "checkpoint.pt"), "--ensemble", str(out / "best.pt")]
    assert main(["eval", tiny_model, *checkpoints, "--data", digits, "--crops", "10"]) == 0
    ten, one, *per_class = capsys.readouterr().out.splitlines()
    assert per_class[0].startswith("per class (mean top-1 ") and len(per_class) == 2 + 10 + 1 + 10
    # the fast recipe trains on unmirrored digits: 5 distinct views (the whole digit and 4 corners)
    note = "5 distinct views per image (10-crop without mirrors: the recipe trains without flips)"
    assert f"(359 images, {note}, 2 models)" in ten
    assert one.endswith("(1 crop, for comparison)") and float(ten.split()[1]) > 0.5


class CountingModel(nn.Module):
    """Records how many inputs it sees; predicts a fixed class."""

    def __init__(self, favourite: int, classes: int = 4):
        super().__init__()
        self.seen, self.favourite, self.classes = 0, favourite, classes

    def forward(self, inputs):
        self.seen += len(inputs)
        return F.one_hot(torch.full((len(inputs),), self.favourite), self.classes).float() * 10


@pytest.mark.parametrize("crops", [1, 10, 144])
def test_evaluation_feeds_every_view(crops):
    split = open_split("fake:24", "val", (3, 16, 16), eval_view(crops, (16, 16), 0.875), num_classes=4)
    model = CountingModel(0)
    result = evaluate([model], DataLoader(split.dataset, 4), start_processes("cpu"))
    views = len(split.dataset[0][0])  # 144 crops of a square image: 42 distinct views
    assert views == {1: 1, 10: 10, 144: 42}[crops]
    assert result.images == 6 and model.seen == 6 * views == result.views
    labels = torch.tensor([int(split.dataset[i][1]) for i in range(6)])
    assert result.top1 == pytest.approx((labels == 0).float().mean().item())
    assert result.top5 == 1.0  # 4 classes: always in the top 5


def test_images_with_different_numbers_of_views_share_a_batch():
    """A square image has 42 distinct 144-crop views, a landscape one 126: each image's softmax
    outputs are averaged over its own views."""
    view = eval_view(144, (16, 16), 0.875)
    shapes = [(16, 16), (16, 32), (20, 20), (40, 20)]
    images = [torch.randint(0, 256, (3, *shape), dtype=torch.uint8) for shape in shapes]
    samples = [(view(image), index % 2) for index, image in enumerate(images)]
    model = CountingModel(1, classes=2)
    result = evaluate([model], DataLoader(samples, 4, collate_fn=collate), start_processes("cpu"))
    counts = [len(views) for views, _ in samples]
    assert counts == [42, 126, 42, 126]
    assert model.seen == result.views == sum(counts) and result.views_per_image == (42, 126)
    assert result.images == 4 and result.top1 == 0.5


def test_ensembles_average_softmax_outputs():
    split = open_split("fake:40", "val", (3, 8, 8), eval_view(1, (8, 8), 1.0), num_classes=4)
    labels = torch.tensor([int(split.dataset[i][1]) for i in range(10)])
    models = [CountingModel(1), CountingModel(2)]
    result = evaluate(models, DataLoader(split.dataset, 5), start_processes("cpu"))
    inputs = torch.zeros(10, 3, 8, 8)
    averaged = sum(model(inputs).softmax(dim=1) for model in models) / 2
    assert result.loss == pytest.approx(-averaged[torch.arange(10), labels].log().mean().item())
    assert result.top1 == pytest.approx((labels == 1).float().mean().item())  # a tie goes to the first


def test_resumed_run_equals_an_uninterrupted_one(tiny_model, tmp_path, monkeypatch):
    # googlenet: EMA, step schedule, flips and photometric distortion all depend on the restored state
    whole = train(config(tiny_model, tmp_path / "whole", recipe="googlenet", epochs=3))
    first = train(config(tiny_model, tmp_path / "part", recipe="googlenet", epochs=2))
    resumed = train(config(tiny_model, tmp_path / "part", recipe="googlenet", epochs=3, resume=True))
    assert first == resumed[:2]
    assert without_speed(resumed) == without_speed(whole)
    assert without_speed(read_metrics(tmp_path / "part")) == without_speed(whole)
    same_state(tmp_path / "whole", tmp_path / "part")


def test_run_killed_after_a_checkpoint_resumes_exactly(tiny_model, tmp_path, monkeypatch):
    whole = train(config(tiny_model, tmp_path / "whole", epochs=3))
    real_save, saved = loop_module.save_checkpoint, []

    def save_then_die(state, path):
        real_save(state, path)
        saved.append(path.name)
        if state["epoch"] == 2 and path.name == "checkpoint.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(
        Interrupted, match="interrupted in epoch 2; .*checkpoint.pt holds epoch 2: .* --resume"
    ):
        train(config(tiny_model, tmp_path / "killed", epochs=3))
    monkeypatch.undo()
    # a metrics line the checkpoint does not cover yet, half written: resume drops it
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as file:
        file.write('{"epoch": 3, "train_lo')
    resumed = train(config(tiny_model, tmp_path / "killed", epochs=3, resume=True))
    assert without_speed(resumed) == without_speed(whole)
    assert [record["epoch"] for record in read_metrics(tmp_path / "killed")] == [1, 2, 3]
    same_state(tmp_path / "whole", tmp_path / "killed")


def same_state(run_a, run_b):
    a, b = load_checkpoint(run_a / "checkpoint.pt"), load_checkpoint(run_b / "checkpoint.pt")
    for key in ("model", "ema"):
        if a[key] is not None:
            flat_a, flat_b = flatten(a[key]), flatten(b[key])
            assert flat_a.keys() == flat_b.keys()
            assert all(torch.equal(flat_a[name], flat_b[name]) for name in flat_a), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix: tree} if isinstance(tree, torch.Tensor) else {}


def test_a_finished_run_has_nothing_more_to_do(tiny_model, tmp_path, capsys):
    history = train(config(tiny_model, tmp_path / "run", epochs=1))
    assert train(config(tiny_model, tmp_path / "run", epochs=1, resume=True)) == history
    assert "nothing to do" in capsys.readouterr().out


def test_an_existing_run_is_not_overwritten(tiny_model, tmp_path):
    train(config(tiny_model, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainError, match="already holds a run"):
        train(config(tiny_model, tmp_path / "run", epochs=1))
    with pytest.raises(TrainError, match="recipe fast, not bvlc"):
        train(config(tiny_model, tmp_path / "run", epochs=2, recipe="bvlc", resume=True))
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_without_a_checkpoint(tiny_model, tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        train(config(tiny_model, tmp_path / "run", epochs=1, resume=True))


def test_too_few_images_for_a_batch(tiny_model, tmp_path):
    with pytest.raises(TrainError, match="less than one batch"):
        train(config(tiny_model, tmp_path / "run", epochs=1, data="fake:4"))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_trains(recipe, tiny_model, tmp_path):
    (record,) = train(config(tiny_model, tmp_path / "run", recipe=recipe, epochs=1))
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (state["ema"] is not None) == (RECIPES[recipe].ema_decay is not None)


def test_amp_and_channels_last(tiny_model, tmp_path):
    (record,) = train(config(tiny_model, tmp_path / "run", epochs=1, amp=True, channels_last=True))
    assert math.isfinite(record["train_loss"])


def test_a_color_folder_with_three_classes(tiny_model, color_folder, tmp_path):
    history = train(config(tiny_model, tmp_path / "run", data=str(color_folder), epochs=2, lr=0.01))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["classes"] == ["blue", "green", "red"]
    assert history[-1]["val_top1"] >= 2 / 3  # three flat colours: learnt within two epochs


class Outputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor


def test_training_loss_adds_weighted_aux_losses():
    labels = torch.tensor([0, 1])
    logits, aux = torch.randn(2, 3), torch.randn(2, 3)
    expected = F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(aux, labels)
    assert torch.allclose(training_loss(Outputs(logits, aux), labels, {"aux1": 0.3}, 0.0), expected)
    assert torch.equal(training_loss(logits, labels, {}, 0.0), F.cross_entropy(logits, labels))


def test_loader_workers_read_the_same_batches(tiny_model, tmp_path):
    in_process = train(config(tiny_model, tmp_path / "a", epochs=1, workers=0))
    with_worker = train(config(tiny_model, tmp_path / "b", epochs=1, workers=1))
    assert without_speed(with_worker) == without_speed(in_process)


def test_through_the_incdsl_command(tiny_model, tmp_path, capsys):
    from incdsl.tools.cli import main as incdsl

    out = tmp_path / "run"
    assert (
        incdsl(
            [
                "train",
                tiny_model,
                "--data",
                "fake:16",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    assert (
        incdsl(
            ["eval", tiny_model, "--checkpoint", str(out / "best.pt"), "--data", "fake:16", "--crops", "144"]
        )
        == 0
    )
    shown = capsys.readouterr().out  # fake images are square: their three squares are one
    assert "(4 images, 21 distinct views per image (144-crop without mirrors" in shown
    assert "(of the paper's 144, each square resized whole once, not at each of the 4 scales)" in shown
    assert "(63 asked; the others would repeat a region: a square image's three squares are one)" in shown
    assert incdsl(["train", tiny_model, "--data", "fake:16", "--out", str(out), "--recipe", "fsat"]) == 2
    assert "did you mean 'fast'" in capsys.readouterr().err
