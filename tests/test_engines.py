"""Inference engines as compile targets and bench variants (incdsl.backends.engines), the fast ONNX export, and
--threads (incdsl.threads). Each engine's file is checked against the PyTorch module built with the
same seed: an independent computation of the same logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from incdsl import build_module, load, threads
from incdsl.backends import engines
from incdsl.tools import bench, cli

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

SPEC = "mini_googlenet"  # 32x32 input, 10 classes: seconds to export


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def reference(x):
    """The plain build's logits, with the weights ``torch.manual_seed(0)`` gives (as the CLI's run)."""
    torch.manual_seed(0)
    model = build_module(load(SPEC)).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def compiled(capsys, tmp_path, target, name, *options):
    torch.manual_seed(0)  # the same weights as reference()
    code, out, err = run(capsys, "compile", SPEC, "--target", target, "-o", tmp_path / name, *options)
    assert code == 0, err
    return out, err


def test_onnxruntime_target_writes_an_optimized_model_with_the_modules_logits(capsys, tmp_path):
    out, err = compiled(capsys, tmp_path, "onnxruntime", "mini.onnx")
    assert "exporting MiniGoogLeNet to ONNX" in err and "optimizing for onnxruntime" in err
    assert f"wrote {tmp_path / 'mini.onnx'}" in out and "onnxruntime.InferenceSession" in out
    assert [p.name for p in tmp_path.iterdir()] == ["mini.onnx"]  # no temporary left beside it
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (got,) = ort.InferenceSession(str(tmp_path / "mini.onnx")).run(None, {"x": x})  # a user's one line
    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-5)
    import onnx

    ops = {node.op_type for node in onnx.load(tmp_path / "mini.onnx").graph.node}
    assert "BatchNormalization" not in ops  # folded; the export's Identity nodes are gone too
    assert "Identity" not in ops


def test_openvino_target_writes_ir_with_the_modules_logits(capsys, tmp_path):
    ov = pytest.importorskip("openvino")
    out, _ = compiled(capsys, tmp_path, "openvino", "mini.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.bin", "mini.xml"]
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = ov.Core().compile_model(str(tmp_path / "mini.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = model(x)[model.output(0)]
    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-5)
    full = (tmp_path / "mini.bin").stat().st_size
    compiled(capsys, tmp_path, "openvino", "half.xml", "--fp16")
    assert (tmp_path / "half.bin").stat().st_size < 0.6 * full  # fp16 weights: half the bytes
    half = ov.Core().compile_model(str(tmp_path / "half.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(half(x)[half.output(0)], reference(x), rtol=0.05, atol=2e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "tensorrt", "-o", "m.onnx"], "invalid choice: 'tensorrt'"),
        (["--target", "openvino", "-o", "m.onnx"], "--target openvino writes a .xml file, not m.onnx"),
        (["--target", "onnxruntime", "-o", "m.py"], "--target onnxruntime writes a .onnx file"),
        (["--target", "onnxruntime", "--optimize", "-o", "m.onnx"], "--optimize cannot go with --target"),
        (["--target", "onnxruntime", "--format", "onnx", "-o", "m.onnx"], "--format cannot go with"),
        (["--target", "onnxruntime", "--fp16", "-o", "m.onnx"], "--fp16 is for --target openvino"),
        (["--fp16", "-o", "m.py"], "--fp16 goes with --target openvino"),
        (["--target", "onnxruntime", "-o", "missing/m.onnx"], "cannot write missing/m.onnx"),
        (["--target", "openvino", "-o", "missing/m.xml"], "cannot write missing/m.xml"),
        (["--target", "openvino", "-o", "folder.xml"], "cannot write folder.xml: it is a directory"),
        (["--target", "openvino", "-o", "folder.xml.xml"], "cannot write folder.xml.bin: it is a directory"),
    ],
)
def test_target_mistakes_are_one_clean_error_and_write_nothing(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.xml").mkdir()
    (tmp_path / "folder.xml.bin").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = run(capsys, "compile", SPEC, *argv)
    assert code == 2 and message in err and "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial file, no temporary


def test_a_failed_openvino_save_leaves_neither_file(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")

    def fail(model, path, compress_to_fp16=False):
        open(path, "w").write("<half")  # as a save interrupted half-way
        raise RuntimeError("disk full")

    monkeypatch.setattr(ov, "save_model", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        engines.write(SPEC, "openvino", tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == []


def test_engine_sessions_use_the_threads_asked_for(tmp_path):
    torch.manual_seed(0)
    model = build_module(load(SPEC)).eval()
    with engines.exported(model, [3, 32, 32]) as path:
        x = np.zeros((1, 3, 32, 32), np.float32)
        for name in ("onnxruntime", "openvino"):
            if engines.version(name) is None:
                continue
            for count in (1, 2):
                runner = engines.load(name, path, threads=count)
                assert runner.threads == count and runner(x).shape == (1, 10)


def test_the_export_uses_the_tracing_exporter_and_falls_back_for_an_operator_it_lacks(tmp_path, monkeypatch):
    """ShuffleNet's channel_shuffle has no tracing-exporter symbolic: the torch.export-based exporter
    takes over, and the file still computes the module's logits."""
    from incdsl.backends import onnx

    used = []
    monkeypatch.setattr(onnx, "_torch_export", lambda *a, real=onnx._torch_export: used.append(1) or real(*a))
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    shuffled = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.ChannelShuffle(2), torch.nn.Flatten()
    ).eval()
    said = []
    for model, expect_fallback in ((plain, False), (shuffled, True)):
        with torch.no_grad():
            model(torch.zeros(1, 3, 6, 6))  # the lazy layer takes its shape
        used.clear()
        path = onnx.export_model(model, [3, 6, 6], tmp_path / "m.onnx", said.append)
        assert bool(used) == expect_fallback
        x = torch.randn(4, 3, 6, 6)
        (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert len(said) == 1 and "using the torch.export-based one" in said[0]


def test_bench_times_the_engines_beside_the_builds_and_checks_their_logits(capsys):
    code, out, err = run(capsys, "bench", SPEC, "--batch", "2", "--train-batch", "0", "--rounds", "1",
                         "--min-time", "0", "--no-compile", "--threads", "1", "--format", "json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["threads"] == 1 and not data["threads_default"]
    by_variant = {m["variant"]: m for m in data["measurements"]}
    assert list(by_variant)[:3] == ["plain", "optimized", "onnxruntime"]
    for name in ("optimized", "onnxruntime", "openvino"):
        m = by_variant[name]
        if m["error"] is not None:
            assert name == "openvino" and m["error"].startswith("not installed")
            continue
        assert m["img_per_s"] > 0 and 0 <= m["max_diff"] < 1e-4


def test_an_engine_that_is_not_installed_is_listed_as_skipped(capsys, monkeypatch):
    real = engines.version
    monkeypatch.setattr(engines, "version", lambda name: None if name == "openvino" else real(name))
    code, out, err = run(capsys, "bench", SPEC, "--batch", "2", "--train-batch", "0", "--rounds", "1",
                         "--min-time", "0", "--no-compile", "--format", "markdown")  # fmt: skip
    assert code == 0, err
    header, _, row = out.splitlines()[2:5]
    assert header.endswith("| onnxruntime img/s | onnxruntime / plain | openvino img/s | openvino / plain |")
    assert row.endswith("| skipped | not installed |")
    assert "batch 2: fastest here is " in out and "onnxruntime" in out


def test_bench_engine_names_are_checked(capsys):
    code, out, err = run(capsys, "bench", SPEC, "--engines", "onnxrt")
    assert code == 2 and "--engines: unknown engine 'onnxrt'" in err and "onnxruntime" in err
    with pytest.raises(Exception, match="unknown engine"):
        bench.run(SPEC, (1,), train_batch=0, engines=("tvm",))


def test_the_default_thread_count_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose(0, cpus=2, busy=0.2, cap=2)[0] == 2  # an idle machine: every core
    assert threads.choose(0, cpus=2, busy=1.0, cap=2)[0] == 1  # one core busy: the other
    assert threads.choose(0, cpus=2, busy=9.0, cap=2)[0] == 1  # never below 1
    assert threads.choose(0, cpus=32, busy=2.0, cap=16)[0] == 16  # never above torch's (physical cores)
    assert threads.choose(5, cpus=2, busy=9.0, cap=2) == (5, "set by --threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose(None) == (torch.get_num_threads(), "OMP_NUM_THREADS")


def test_using_sets_and_restores_torchs_threads():
    before = torch.get_num_threads()
    with threads.using(1) as (count, why):
        assert torch.get_num_threads() == count == 1 and why == "set by --threads"
    assert torch.get_num_threads() == before


def test_busy_cpus_counts_what_proc_stat_says_others_used(monkeypatch):
    """Two samples of /proc/stat's ticks, 40 apart on 2 CPUs, 10 of them free: 1.5 CPUs busy. Without
    /proc/stat, the load average stands in; on Linux the real sample is a share of the CPUs."""
    samples = iter([(1000, 400), (1040, 410)])
    monkeypatch.setattr(threads, "_affinity", lambda: {0, 1})
    monkeypatch.setattr(threads, "_times", lambda cpus: next(samples))
    assert threads.busy_cpus(interval=0) == (1.5, "busy")

    def unreadable(cpus):
        raise OSError("no /proc/stat")

    monkeypatch.setattr(threads, "_times", unreadable)
    assert threads.busy_cpus(interval=0) == (os.getloadavg()[0], "load average")
    monkeypatch.undo()
    if os.path.exists("/proc/stat"):
        busy, source = threads.busy_cpus(interval=0.05)
        assert source == "busy" and 0.0 <= busy <= threads.usable_cpus() + 1e-9


def test_busy_cpus_reads_only_this_processs_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  30 0 0 70 0 0 0 0 0 0\ncpu0 10 0 0 40 0 0 0 0 0 0\ncpu1 20 0 0 25 5 0 0 0 0 0\nintr 5\n"
    )
    assert threads._times({1}, str(stat)) == (50, 30)  # idle and iowait are free
    assert threads._times({0, 1}, str(stat)) == (100, 70) and threads._times({7}, str(stat)) is None
