"""incdsl bench: it runs end to end and reports what the README documents. Timings are never asserted
(a shared machine makes them noise); only that every figure is there and positive."""

import json

import pytest

from incdsl.tools import bench, cli

torch = pytest.importorskip("torch")

FAST = ["--rounds", "1", "--min-time", "0", "--no-compile"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_json_has_the_documented_fields(capsys):
    code, out, err = run(capsys, "bench", "mini_googlenet", "--batch", "2", "--train-batch", "2", *FAST,
                         "--engines", "none", "--format", "json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {
        "spec", "network", "input", "params", "macs", "measurements", "source_seconds", "rounds",
        "min_time", "seed", "threads", "threads_default", "torch", "machine", "load_average", "started",
    }  # fmt: skip
    assert data["network"] == "MiniGoogLeNet" and data["input"] == [3, 32, 32] and data["rounds"] == 1
    assert 1 <= data["threads"] <= torch.get_num_threads() and data["threads_default"]  # incdsl.threads
    assert data["torch"] == torch.__version__
    rows = [(m["mode"], m["batch"], m["variant"]) for m in data["measurements"]]
    assert rows == [("eval", 2, "plain"), ("eval", 2, "optimized"), ("train", 2, "plain")]
    for m in data["measurements"]:
        assert set(m) == {"mode", "batch", "variant", "img_per_s", "ratio", "rates", "ratios",
                          "compile_seconds", "error", "max_diff"}  # fmt: skip
        assert m["img_per_s"] > 0 and len(m["rates"]) == 1 and m["compile_seconds"] is None
        assert set(m["ratio"]) == {"median", "low", "high"}
    assert data["measurements"][0]["ratio"]["median"] == 1.0  # plain against itself
    assert data["source_seconds"]["median"] > 0
    assert set(data["load_average"]) == {"before", "after"}
    assert "timing MiniGoogLeNet, eval at batch 2" in err  # progress goes to stderr, JSON alone to stdout


def test_bench_table_and_markdown(capsys):
    code, out, _ = run(capsys, "bench", "mini_googlenet", "--batch", "1", "--train-batch", "0", *FAST,
                       "--engines", "none")  # fmt: skip
    assert code == 0 and "optimized / plain" in out and "incdsl's default" in out
    code, out, _ = run(capsys, "bench", "mini_googlenet", "--batch", "1", "--train-batch", "0", *FAST,
                       "--engines", "none", "--format", "markdown")  # fmt: skip
    assert code == 0 and out.startswith("# MiniGoogLeNet") and "| eval | 1 | " in out


def test_the_library_interleaves_and_ratios_within_rounds():
    threads = torch.get_num_threads()
    result = bench.run("mini_googlenet", (1,), train_batch=0, rounds=3, compile=False, min_time=0, threads=1)
    assert result.threads == 1 and not result.threads_default and torch.get_num_threads() == threads
    plain, optimized = result.measurements
    assert len(optimized.rates) == len(optimized.ratios) == 3
    assert optimized.ratios == tuple(o / p for o, p in zip(optimized.rates, plain.rates))
    assert optimized.ratio.low <= optimized.ratio.median <= optimized.ratio.high
    table = bench.markdown_table([result])
    assert table.splitlines()[2].startswith("| mini_googlenet | eval | 1 | ")
    assert bench.from_dict(json.loads(json.dumps(bench.to_dict(result)))) == result


def test_a_failed_compile_is_reported_not_raised():
    measured = [bench.Measurement("eval", 8, "plain", (1.0,), (1.0,))]
    failed = bench._with_compile(measured, bench._Compiled(None, "BackendCompilerFailed: no compiler"))
    assert failed[-1].variant == "compiled" and failed[-1].img_per_s is None
    result = bench.BenchResult("s", "N", (3, 8, 8), 1, 1, tuple(failed), bench.Spread(1, 1, 1), 1, 0, 0, 1, True,
                               "t", "m", (0, 0, 0), (0, 0, 0), "2026-01-01T00:00:00+00:00")  # fmt: skip
    assert bench.cells(result, "eval", 8)[-3:] == ["failed", "BackendCompilerFailed", "-"]


def test_source_seconds_is_positive():
    timing = bench.source_seconds("googlenet", repeats=2)
    assert 0 < timing.low <= timing.median <= timing.high


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuchspec"], "no spec file or shipped spec named 'nosuchspec'"),
        (["mini_googlenet", "--batch", "8,x"], "--batch: 'x' is not an integer"),
        (["mini_googlenet", "--batch", "0"], "--batch: "),
        (["mini_googlenet", "--batch", ""], "--batch: "),
        (["mini_googlenet", "--train-batch", "1"], "--train-batch 1: give 2 to"),
        (["mini_googlenet", "--rounds", "0"], "--rounds: "),
        (["mini_googlenet", "--min-time", "nan"], "--min-time: "),
        (["mini_googlenet", "--threads", "-1"], "--threads: "),
    ],
)
def test_bench_errors_exit_2_without_a_traceback(capsys, argv, message):
    code, out, err = run(capsys, "bench", *argv)
    assert code == 2 and message in err and "Traceback" not in err and out == ""
