"""Hostile and careless input to the newer surfaces (issue 18): port-weights, fit, diff, runs, plot,
bench. Whatever a file or an option says, incdsl answers with a clear error (exit 2, no traceback) or a
correct result, and changes no file it reads. The language server's cases are in test_lsp.py."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT

from incdsl.tools import cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "net.inc"
    path.write_text((ROOT / "specs" / "mini_googlenet.inc").read_text())
    return path


# -- a 1,000-deep template chain: a clear error, not RecursionError ------------------------------------


def chain(depth: int) -> str:
    lines = ["network deep", "input 32x32x3", "classes 10", "budget 1G", ""]
    lines += ["template t0(w) {", "    conv 3x3 w", "}"]
    for i in range(1, depth):
        lines += [f"template t{i}(w) {{", f"    t{i - 1} w", "}"]
    return "\n".join([*lines, f"a: t{depth - 1} 16", "pool: global_avgpool", "fc: linear classes", ""])


@pytest.mark.parametrize("command", ["check", "fit", "diff", "stats"])
def test_a_thousand_deep_template_chain_is_a_spec_error(capsys, tmp_path, command):
    path = tmp_path / "deep.inc"
    path.write_text(chain(1000))
    argv = [command, path, path] if command == "diff" else [command, path]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "nests deeper than 64 levels" in err and "Traceback" not in err


def test_a_template_chain_within_the_limit_builds(capsys, tmp_path):
    path = tmp_path / "chain.inc"
    path.write_text(chain(50))
    code, out, err = run(capsys, "check", path)
    assert code == 0, err


# -- fit: the output-file policy -----------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_fit_never_writes_over_its_input(capsys, tmp_path, spec, alias):
    before = spec.read_bytes()
    out = {"same": spec, "symlink": tmp_path / "link.inc", "hardlink": tmp_path / "hard.inc"}[alias]
    if alias == "symlink":
        out.symlink_to(spec)
    elif alias == "hardlink":
        os.link(spec, out)
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", out)
    assert code == 2 and "is the input file" in err, err
    assert spec.read_bytes() == before


def test_fit_refuses_an_empty_output_name(capsys, spec):
    code, out, err = run(capsys, "fit", spec, "--budget", "30M", "-o", "")
    assert code == 2 and "the output file name is empty" in err, err
    assert out == ""  # not taken as "no -o": nothing printed


def test_fit_refuses_a_directory_before_fitting(capsys, tmp_path, spec):
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", tmp_path)
    assert code == 2 and "a directory" in err, err


def test_fit_still_writes_a_new_file(capsys, tmp_path, spec):
    out = tmp_path / "fitted.inc"
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", out)
    assert code == 0, err
    assert out.read_text().startswith("# Fitted by")


# -- port-weights: files that hold no weights ------------------------------------------------------------


def test_port_weights_refuses_an_empty_file(capsys, tmp_path, spec):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "port-weights", spec, empty, "-o", tmp_path / "out.pt")
    assert code == 2 and "empty.pt is empty" in err, err
    assert not (tmp_path / "out.pt").exists()


def test_port_weights_names_an_unreadable_file_whatever_its_error_says(capsys, tmp_path, spec):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00")
    code, _, err = run(capsys, "port-weights", spec, junk, "-o", tmp_path / "out.pt")
    assert code == 2 and "cannot read weights from" in err, err


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda torch: torch.zeros(4, 4, device="meta"), "on the meta device"),
        (lambda torch: torch.zeros(4, 4).to_sparse(), "sparse_coo, not a dense tensor"),
    ],
)
def test_port_weights_refuses_tensors_without_dense_values(capsys, tmp_path, spec, make, words):
    torch = pytest.importorskip("torch")
    path = tmp_path / "odd.pt"
    torch.save({"conv1.weight": torch.zeros(2), "conv1.bias": make(torch)}, path)
    code, _, err = run(capsys, "port-weights", spec, path, "-o", tmp_path / "out.pt")
    assert code == 2 and f"tensor conv1.bias in {path} is" in err and words in err, err
    assert not (tmp_path / "out.pt").exists()


# -- runs and plot: a run directory is a stranger's file ----------------------------------------------

RECORD = {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_top1": 0.5, "val_top5": 0.9, "lr": 0.01,
          "img_per_s": 100.0}  # fmt: skip
INFO = {"format": "incdsl-run/1", "target": "specs/small.inc", "network": "Small", "recipe": "fast",
        "epochs": 2, "num_classes": 4, "images_per_epoch": 600, "spec_text": None}  # fmt: skip


def run_dir(tmp_path, metrics: str | bytes | None = None, info=INFO, name="run"):
    import json

    folder = tmp_path / name
    folder.mkdir()
    metrics = json.dumps(RECORD) + "\n" if metrics is None else metrics
    (folder / "metrics.jsonl").write_bytes(metrics if isinstance(metrics, bytes) else metrics.encode())
    if info is not None:
        (folder / "run.json").write_text(info if isinstance(info, str) else json.dumps(info))
    return folder


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", ":1: an epoch's record is a JSON object, not a list"),
        ('"text"', ":1: an epoch's record is a JSON object, not a string"),
        ('{"val_top1": 0.5}', ":1: the record has no 'epoch' field"),
        ('{"epoch": 1}', ":1: the record has no 'val_top1' field"),
        ('{"epoch": "1", "val_top1": 0.5}', """:1: field 'epoch' is the string "1", not an epoch count"""),
        ('{"epoch": true, "val_top1": 0.5}', ":1: field 'epoch' is a boolean, not an epoch count"),
        ('{"epoch": -3, "val_top1": 0.5}', ":1: field 'epoch' is -3, not an epoch count"),
        ('{"epoch": 1, "val_top1": "0.5"}', """:1: field 'val_top1' is the string "0.5", not a number"""),
        ('{"epoch": 1, "val_top1": 0.5, "lr": [1]}', ":1: field 'lr' is a list, not a number"),
        ('{"epoch": 1, "val_top1": 0.5, "img_per_s": 1e999999}', None),  # Infinity: kept, shown as inf
        ('{"epoch": 1, "val_top1": 0.5, "lr": ' + "9" * 400 + "}", ":1: field 'lr' is a number too large"),
        ('{"epoch": 1, "val_top1": 0.5, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", None),  # too long
        (
            '{"epoch": 1, "val_top1": 0.5, "x": ' + "[" * 5_000 + "]" * 5_000 + "}",
            ":1: JSON nested more than 32",
        ),
        ("{not json", ":1: not JSON"),
        (b"\xff\xfe{}", ":1: not UTF-8 text"),
    ],
    ids=lambda value: str(value)[:30] if isinstance(value, str) and value.startswith(":") else "",
)
@pytest.mark.parametrize("command", ["runs", "runs-json", "runs-markdown", "plot"])
def test_a_bad_metrics_line_is_named_by_file_line_and_field(capsys, tmp_path, line, message, command):
    if isinstance(line, str) and line.count("[") > 10_000:
        message = ":1: the line is longer than 64 KiB"
    good = '{"epoch": 0, "val_top1": 0.25}\n'
    folder = run_dir(tmp_path, metrics=good.encode() + (line if isinstance(line, bytes) else line.encode()))
    if command == "plot":
        pytest.importorskip("matplotlib")
        argv = ["plot", folder, "-o", tmp_path / "c.png"]
    else:
        argv = ["runs", folder, "--format", command.partition("-")[2] or "table"]
    code, out, err = run(capsys, *argv)
    if message is None:
        assert code == 0, err
        return
    assert code == 2, err
    assert f"{folder / 'metrics.jsonl'}:2" + message[2:] in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "info, message",
    [
        ("[]", "a run's description is a JSON object, not a list"),
        ('{"recipe": 3}', "field 'recipe' is 3, not text"),
        ('{"target": {"a": 1}}', "field 'target' is an object, not text"),
        ('{"images_per_epoch": "600"}', """field 'images_per_epoch' is the string "600", not a count"""),
        ('{"num_classes": 1.5}', "field 'num_classes' is 1.5, not a count"),
        ('{"lr": "fast"}', """field 'lr' is the string "fast", not a number"""),
        ("[" * 100_000 + "]" * 100_000, "JSON nested more than 32 deep"),
        ("{", "not JSON"),
    ],
)
def test_a_bad_run_json_is_named_with_its_field(capsys, tmp_path, info, message):
    folder = run_dir(tmp_path, info=info)
    for fmt in ("table", "json", "markdown"):
        code, _, err = run(capsys, "runs", folder, "--format", fmt)
        assert code == 2 and f"{folder / 'run.json'}: {message}" in err, err


def test_a_gigabyte_of_newlines_is_refused_by_its_size_without_reading_it(capsys, tmp_path):
    folder = run_dir(tmp_path)
    with open(folder / "metrics.jsonl", "r+b") as file:
        file.truncate(1024**3)  # a sparse file: the size of 1 GB of zeros, instantly
    code, _, err = run(capsys, "runs", folder)
    assert code == 2 and "larger than 64 MiB, the limit for a run's metrics" in err, err


def test_blank_lines_are_read_line_by_line(capsys, tmp_path):
    import json

    folder = run_dir(tmp_path, metrics="\n" * 1_000_000 + json.dumps(RECORD) + "\n")
    code, out, err = run(capsys, "runs", folder, "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["best"]["epoch"] == 1


def test_a_huge_run_json_is_refused(capsys, tmp_path):
    folder = run_dir(tmp_path, info='{"spec_text": "' + "x" * (5 * 1024 * 1024) + '"}')
    code, _, err = run(capsys, "runs", folder)
    assert code == 2 and "larger than 4 MiB" in err, err


def test_runs_json_with_nan_and_infinity_is_strict_json(capsys, tmp_path):
    import json

    metrics = (
        '{"epoch": 1, "val_top1": 0.5, "val_top5": NaN, "train_loss": Infinity, "img_per_s": -Infinity}\n'
    )
    metrics += '{"epoch": 2, "val_top1": NaN}\n'
    folder = run_dir(tmp_path, metrics=metrics)
    code, out, err = run(capsys, "runs", folder, "--format", "json")
    assert code == 0, err
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
    best = data[0]["best"]
    assert best["epoch"] == 1 and best["val_top5"] is None and best["train_loss"] is None
    assert data[0]["train_seconds"] is None or data[0]["train_seconds"] == 0


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_figures_that_overflow_are_shown_as_unknown(capsys, tmp_path, fmt):
    info = {**INFO, "images_per_epoch": 2**63}
    folder = run_dir(tmp_path, metrics='{"epoch": 1, "val_top1": 0.5, "img_per_s": 1e-300}\n', info=info)
    code, out, err = run(capsys, "runs", folder, "--format", fmt)
    assert code == 0, err  # not OverflowError from the train time's rounding
    if fmt == "markdown":
        assert out.strip().splitlines()[-1].split("|")[-2].strip() == "—"  # the train time
    elif fmt == "json":
        assert '"train_seconds": null' in out


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_escape_sequences_in_a_run_never_reach_the_terminal(capsys, tmp_path, fmt):
    info = {**INFO, "target": "evil\x1b[2J\x1b]0;title\x07.inc", "recipe": "[bold]x[/] \x1b[31m|"}
    folder = run_dir(tmp_path, info=info)
    code, out, err = run(capsys, "runs", folder, "--format", fmt)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "[bold]x[/]" in out


def test_plot_labels_are_text_not_mathtext(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    folder = run_dir(tmp_path, info={**INFO, "recipe": "$\\frac{1}{$"})
    code, _, err = run(capsys, "plot", folder, "-o", tmp_path / "c.svg")
    assert code == 0, err


# -- bench: a batch that cannot fit is refused before anything is allocated ----------------------------


@pytest.mark.parametrize("option, value", [("--batch", "1,4096"), ("--train-batch", "4096")])
def test_bench_refuses_a_batch_that_cannot_fit_naming_the_largest_that_can(
    capsys, monkeypatch, option, value
):
    pytest.importorskip("torch")
    import re

    import incdsl
    from incdsl import memory
    from incdsl.backends.pytorch.memory import Setting, estimate
    from incdsl.tools import bench

    free = 512 * 1024**2
    monkeypatch.setattr(memory, "available_on", lambda device: free)
    monkeypatch.setattr(bench, "builds", lambda *a: pytest.fail("built the models before the check"))
    other = ["--train-batch", "0"] if option == "--batch" else ["--batch", "1"]
    code, _, err = run(
        capsys, "bench", "googlenet_tv", option, value, *other, "--no-compile", "--rounds", "1"
    )
    assert code == 2, err
    assert "at batch 4096 needs about" in err and "more than the 512.0 MiB available on cpu" in err, err
    largest = int(re.search(rf"the largest batch that fits is (\d+): {option} (\d+)", err).group(1))
    net = incdsl.load("googlenet_tv")
    weights = estimate(net, Setting(1)).weights
    train = option == "--train-batch"

    def needed(batch):
        setting = Setting(batch, training=True, optimizer="sgd") if train else Setting(batch)
        return estimate(net, setting).peak + (2 if train else 1) * weights

    assert 1 < largest < 4096 and needed(largest) <= free < needed(largest + 1)


def test_bench_refuses_when_not_even_the_smallest_batch_fits(capsys, monkeypatch):
    pytest.importorskip("torch")
    from incdsl import memory
    from incdsl.tools import bench

    monkeypatch.setattr(memory, "available_on", lambda device: 1024)
    monkeypatch.setattr(bench, "builds", lambda *a: pytest.fail("built the models before the check"))
    code, _, err = run(
        capsys, "bench", "mini_googlenet", "--batch", "1", "--train-batch", "0", "--no-compile"
    )
    assert code == 2 and "not even the smallest batch fits" in err, err


# -- fuzzing run directories: whatever the files say, runs and plot answer 0 or 2 -----------------------

RUN_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1", "0", "true", "null", '"x"', "[", "]", "{", "}",
              ",", ":", '"epoch"', '"val_top1"', "\n", "\x1b[2J", "\x00", "9" * 5000, "[" * 50]  # fmt: skip


def mutate(rng, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.6:
            text = text[:at] + rng.choice(RUN_TOKENS) + text[at:]
        else:
            text = text[:at] + text[at + rng.randint(1, 12) :]
    return text


def test_fuzzed_run_directories_are_read_or_refused(capsys, tmp_path):
    import json
    import random

    metrics = "".join(json.dumps({**RECORD, "epoch": e}) + "\n" for e in range(1, 4))
    codes = set()
    for seed in range(150):
        rng = random.Random(seed)
        folder = run_dir(
            tmp_path, metrics=mutate(rng, metrics), info=mutate(rng, json.dumps(INFO)), name=f"r{seed}"
        )
        for fmt in ("table", "json", "markdown"):
            code, out, err = run(capsys, "runs", folder, "--format", fmt)
            assert code in (0, 2) and "Traceback" not in err, f"seed {seed}: {err}"
            codes.add(code)
            assert "\x1b" not in out + err, f"seed {seed}"
            if code == 0 and fmt == "json":
                json.loads(out, parse_constant=lambda name, seed=seed: pytest.fail(f"seed {seed}: {name}"))
    assert codes == {0, 2}  # both kinds of mutant were drawn
