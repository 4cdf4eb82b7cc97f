"""How fast one spec's builds run, measured side by side: ``incdsl bench SPEC``.

Three variants of the same weights: the plain build (``build_module(net)``), the optimized build
(``build_module(net, optimize=True)`` loading the plain one's state_dict) and that through
``torch.compile`` (inductor); with ``engines``, the inference engines too
(:mod:`incdsl.backends.engines`: ONNX
Runtime and OpenVINO, each running the ONNX export of the plain build with its graph optimizations on,
at the same thread count as torch; an engine that is not installed is listed as skipped). Every eval
variant's logits are compared with the plain build's on the timed input (the largest absolute difference
is reported: ``max_diff``). Each is timed in eval mode under ``torch.inference_mode()`` at each batch
size, and a training step (forward, backward, SGD step; aux heads in the loss) of the plain build (the
optimized build is inference-only), and optionally of it through torch.compile. Also timed: ``incdsl
compile``'s work for the spec (parse, IR, passes, code generation, black).

How: after a warm-up (for a compiled variant, its first call, which compiles and is reported on its
own), the variants of one row take turns, round by round (A B C, then C B A, ...), so that a shared
machine's drifts hit all alike; each measurement runs whole batches for at least ``min_time`` seconds.
A ratio is taken within a round (variant / plain), and reported as the median over the rounds with
its spread (the lowest and highest round). Threads are incdsl's default (:mod:`incdsl.threads`) unless
``threads`` sets them.

>>> result = run("mini_googlenet", batches=(2,), train_batch=0, rounds=1, compile=False, min_time=0)
>>> [(m.mode, m.batch, m.variant, len(m.rates)) for m in result.measurements]
[('eval', 2, 'plain', 1), ('eval', 2, 'optimized', 1)]
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from incdsl import render
from incdsl.errors import IncdslError
from incdsl.ir.tree import Network
from incdsl.numbers import NumberError, read_int
from incdsl.render import Column, Document, Table

BATCHES = (1, 8, 32)
TRAIN_BATCH = 16
ROUNDS = 5
MIN_TIME = 1.0  # seconds: the least time of one measurement (whole batches, at least one)
MAX_BATCH = 4096
SEED = 0
EVAL_VARIANTS = ("plain", "optimized", "compiled")
ENGINES = ("onnxruntime", "openvino")  # incdsl.backends.engines', in the order shown
TRAIN_VARIANTS = ("plain", "compiled")  # the optimized build is inference-only
LR = 1e-3  # small: the weights stay finite over many steps on random labels


@dataclass(frozen=True)
class Spread:
    """The median of some figures and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class Measurement:
    """One variant at one batch size: images per second in each round, and the ratio to the plain
    build's rate in the same round. ``compile_seconds``: a compiled variant's first call (compilation
    and one pass); ``error``: why it could not be compiled, or an engine was skipped (then no rates);
    ``max_diff``: the largest absolute difference of its logits from the plain build's (eval only)."""

    mode: str  # "eval" or "train"
    batch: int
    variant: str
    rates: tuple[float, ...]
    ratios: tuple[float, ...]
    compile_seconds: float | None = None
    error: str | None = None
    max_diff: float | None = None

    @property
    def img_per_s(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def ratio(self) -> Spread | None:
        return Spread.of(self.ratios) if self.ratios else None


@dataclass(frozen=True)
class BenchResult:
    """What :func:`run` measured, and on what."""

    spec: str
    network: str
    input: tuple[int, int, int]  # channels, height, width
    params: int
    macs: int
    measurements: tuple[Measurement, ...]
    source_seconds: Spread  # incdsl compile's work: parse, IR, passes, code generation, black
    rounds: int
    min_time: float
    seed: int
    threads: int
    threads_default: bool  # incdsl's default (incdsl.threads), not set for the run
    torch: str
    machine: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    started: str  # when, in UTC (ISO 8601, to the second)

    def rows(self) -> list[tuple[str, int]]:
        """(mode, batch) in the order measured."""
        return list(dict.fromkeys((m.mode, m.batch) for m in self.measurements))

    def get(self, mode: str, batch: int, variant: str) -> Measurement | None:
        return next(
            (m for m in self.measurements if (m.mode, m.batch, m.variant) == (mode, batch, variant)), None
        )


def parse_batches(text: str) -> tuple[int, ...]:
    """``--batch 1,8,32``: distinct batch sizes, in the order given.

    >>> parse_batches("1,8, 32")
    (1, 8, 32)
    """
    sizes = []
    for part in text.split(","):
        try:
            sizes.append(read_int(part.strip(), 1, MAX_BATCH))
        except NumberError as error:
            raise IncdslError(
                f"--batch: {error}", hint="a comma-separated list, like --batch 1,8,32"
            ) from None
    return tuple(dict.fromkeys(sizes))


def check_train_batch(batch: int) -> int:
    if batch == 1 or not 0 <= batch <= MAX_BATCH:
        raise IncdslError(
            f"--train-batch {batch}: give 2 to {MAX_BATCH:,} (BatchNorm needs two values per channel "
            "when training), or 0 for no training step"
        )
    return batch


def run(
    target: str | Path,
    batches: Sequence[int] = BATCHES,
    train_batch: int = TRAIN_BATCH,
    rounds: int = ROUNDS,
    compile: bool = True,
    min_time: float = MIN_TIME,
    seed: int = SEED,
    train_compile: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    engines: Sequence[str] = (),
) -> BenchResult:
    """Measure one spec (see the module docstring). ``train_batch`` 0: no training step;
    ``compile`` False: no compiled variants (inductor takes minutes per shape on a small CPU);
    ``train_compile``: the training step through torch.compile too (forward and backward: several
    times an eval shape's compile time); ``threads``: torch's intra-op threads for the run (default:
    incdsl's default, see :mod:`incdsl.threads`), the engines' too; ``progress``: called with a line of
    news before each slow step; ``engines``: the inference engines to time beside the builds (names in
    ``ENGINES``; those not installed are listed as skipped)."""
    if rounds < 1:
        raise IncdslError(f"--rounds {rounds}: at least 1")
    check_train_batch(train_batch)
    for batch in batches:
        if not 1 <= batch <= MAX_BATCH:
            raise IncdslError(f"batch size {batch}: give 1 to {MAX_BATCH:,}")
    if threads is not None and threads < 0:
        raise IncdslError(f"--threads {threads}: at least 0 (0: the default)")
    for name in engines:
        if name not in ENGINES:
            raise IncdslError(f"unknown engine '{name}'", hint=f"one of {', '.join(ENGINES)}")
    from incdsl.threads import using

    with using(threads):
        return _run(target, batches, train_batch, rounds, compile, min_time, seed, train_compile,
                    not threads, progress or (lambda line: None), tuple(engines))  # fmt: skip


def _run(target, batches, train_batch, rounds, compile, min_time, seed, train_compile, default, say, engines):
    import torch

    from incdsl import load
    from incdsl.analysis import report

    net = load(target)
    check_memory(net, batches, train_batch, train_compile)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    source = source_seconds(target)
    plain, optimized = builds(net, seed)
    bench = _Bench(net, rounds, min_time, say)
    measurements = []
    with engine_runners(net, plain, engines, torch.get_num_threads(), say) as runners:
        for batch in batches:
            measurements += bench.eval_row(batch, plain, optimized, compile, runners)
    if train_batch:
        measurements += bench.train_row(train_batch, plain, compile and train_compile)
    if compile:
        torch._dynamo.reset()
    stats = report.compute(net)
    return BenchResult(
        spec=str(target),
        network=net.name,
        input=tuple(net.input.as_list()),
        params=stats.params,
        macs=stats.macs,
        measurements=tuple(measurements),
        source_seconds=source,
        rounds=rounds,
        min_time=min_time,
        seed=seed,
        threads=torch.get_num_threads(),
        threads_default=default,
        torch=torch.__version__,
        machine=machine(),
        load_before=load_before,
        load_after=os.getloadavg(),
        started=started,
    )


def check_memory(net: Network, batches: Sequence[int], train_batch: int, train_compile: bool = False) -> None:
    """Refuse, before anything is allocated, a batch whose step cannot fit in the free memory of torch's
    default device, naming the largest that can: the estimate of :mod:`incdsl.backends.pytorch.memory` (the
    trainer's), plus the other builds the benchmark holds at the same time (the plain and optimized
    eval builds; a training copy of the plain one, and a compiled one with ``train_compile``)."""
    from incdsl.backends.pytorch.memory import DEVICES, Setting, estimate, largest_batch
    from incdsl.memory import OutOfMemory, available_on, default_device, human_bytes

    device = default_device()
    free = available_on(device)
    if free is None:
        return
    kind = device.type if device.type in DEVICES else "cpu"
    weights = estimate(net, Setting(1, device=kind)).weights
    steps = [("eval", "--batch", b, Setting(b, device=kind), weights) for b in batches]  # + the other build
    if train_batch:
        setting = Setting(train_batch, training=True, device=kind, optimizer="sgd")  # bench's SGD, momentum
        steps.append(
            ("a training step", "--train-batch", train_batch, setting, (3 if train_compile else 2) * weights)
        )
    for what, option, batch, setting, others in steps:
        needed = estimate(net, setting).peak + others
        if needed <= free:
            continue
        largest = largest_batch(net, setting, free - others, MAX_BATCH) if free > others else 0
        if option == "--train-batch" and largest == 1:
            largest = 0  # BatchNorm trains on 2 or more
        hint = (
            f"the largest batch that fits is {largest}: {option} {largest}"
            if largest
            else "not even the smallest batch fits: use a smaller model or a machine with more memory"
        )
        raise OutOfMemory(
            f"{net.name}: {what} at batch {batch} needs about {human_bytes(needed)} (with the benchmark's "
            f"other builds), more than the {human_bytes(free)} available on {device}",
            hint=hint,
        )


def builds(net: Network, seed: int = SEED):
    """The plain build in eval mode and the optimized build, holding the same weights (the plain
    one's, drawn after ``torch.manual_seed(seed)``)."""
    import torch

    from incdsl import build_module

    torch.manual_seed(seed)
    plain = build_module(net).eval()
    optimized = build_module(net, optimize=True)
    optimized.load_state_dict(plain.state_dict())
    return plain, optimized


@contextlib.contextmanager
def engine_runners(net: Network, plain, names: Sequence[str], threads: int, say: Callable[[str], None]):
    """For each engine asked for, a function running the ONNX export of ``plain`` (numpy in, logits
    out) with ``threads`` threads, or the reason it cannot run (a string: not installed, failed)."""
    from incdsl.backends import engines

    runners: dict[str, Callable | str] = {}
    for name in names:
        if engines.version(name) is None:
            runners[name] = f"not installed ({engines.ENGINES[name].install})"
    wanted = [name for name in names if name not in runners]
    if not wanted:
        yield runners
        return
    say(f"exporting {net.name} to ONNX for {', '.join(wanted)}")
    with engines.exported(plain, net.input.as_list()) as path:
        for name in wanted:
            try:
                runners[name] = engines.load(name, path, threads)
            except IncdslError as error:
                say(f"{name} failed: {error.message}")
                runners[name] = f"failed: {error.message}"
        yield runners


def source_seconds(
    target: str | Path, repeats: int = 5, optimize: bool = False, formatted: bool = True
) -> Spread:
    """Seconds that ``incdsl compile`` spends on a spec in a warm process: read, parse, build the IR,
    run the passes, generate the source and (``formatted``) format it with black; the median and
    range of ``repeats``, after one untimed run that builds the parser.

    >>> source_seconds("mini_googlenet", repeats=1).median > 0
    True
    """
    from incdsl import compile_source

    compile_source(target, formatted, optimize)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        compile_source(target, formatted, optimize)
        times.append(time.perf_counter() - started)
    return Spread.of(times)


def machine() -> str:
    """The CPU's model name, its logical CPUs and the vector instructions torch uses."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}, {os.cpu_count()} CPUs, {capability}"


# renderings ----------------------------------------------------------------------------------------
HEADERS = (
    "mode", "batch", "plain img/s", "optimized img/s", "optimized / plain", "compiled img/s",
    "compiled / plain", "compile s",
)  # fmt: skip


def engines_of(results: Sequence[BenchResult]) -> list[str]:
    """The engines any of ``results`` asked for (measured, failed or skipped), in ENGINES' order."""
    asked = {m.variant for result in results for m in result.measurements}
    return [name for name in ENGINES if name in asked]


def headers(results: Sequence[BenchResult]) -> tuple[str, ...]:
    """HEADERS, and two columns for each engine asked for."""
    return HEADERS + tuple(h for name in engines_of(results) for h in (f"{name} img/s", f"{name} / plain"))


def cells(result: BenchResult, mode: str, batch: int, engines: Sequence[str] | None = None) -> list[str]:
    """One row of the table: rates (medians), ratios to plain (median, low-high), first call's time,
    then the engines' (``engines``: their columns, by default those ``result`` asked for)."""
    row = [mode, str(batch)]
    for variant in EVAL_VARIANTS:
        row += _variant_cells(result.get(mode, batch, variant), variant)
    compiled = result.get(mode, batch, "compiled")
    row.append(f"{compiled.compile_seconds:,.0f}" if compiled and compiled.compile_seconds else "-")
    for name in engines_of([result]) if engines is None else engines:
        row += _variant_cells(result.get(mode, batch, name), name)
    return row


def _variant_cells(m: Measurement | None, variant: str) -> list[str]:
    if m is None:
        return ["-"] if variant == "plain" else ["-", "-"]
    if m.error is not None:
        skipped = m.error.startswith("not installed")
        return ["skipped" if skipped else "failed", "not installed" if skipped else m.error.split(":")[0]]
    return [f"{m.img_per_s:,.1f}"] + ([format_ratio(m.ratio)] if variant != "plain" else [])


def fastest(result: BenchResult, batch: int) -> Measurement | None:
    """The eval variant with the highest median ratio to the plain build at ``batch`` (each ratio is
    taken within a round, so a shared machine's drifts cancel; None when none was timed)."""
    timed = [m for m in result.measurements if (m.mode, m.batch) == ("eval", batch) and m.rates]
    return max(timed, key=lambda m: m.ratio.median, default=None)


def verdicts(result: BenchResult) -> list[str]:
    """Per eval batch size: which variant is fastest here, and how far each one's logits are from the
    plain build's (the largest absolute difference)."""
    lines = []
    for mode, batch in result.rows():
        best = fastest(result, batch) if mode == "eval" else None
        if best is None:
            continue
        diffs = ", ".join(
            f"{m.variant} {m.max_diff:.1e}"
            for m in result.measurements
            if (m.mode, m.batch) == (mode, batch) and m.max_diff is not None and m.variant != "plain"
        )
        ms = 1000 * batch / best.img_per_s
        lines.append(
            f"batch {batch}: fastest here is {best.variant}, {ms:,.1f} ms per batch "
            f"({best.ratio.median:.2f}x the plain build)"
            + (f"; logits' largest difference from the plain build's: {diffs}" if diffs else "")
        )
    return lines


def format_ratio(ratio: Spread) -> str:
    """``2.21x (2.05-2.40)``: the median of the rounds' ratios, then the lowest and the highest."""
    return f"{ratio.median:.2f}x ({ratio.low:.2f}-{ratio.high:.2f})"


def conditions(result: BenchResult) -> str:
    """How and where it was measured, in one line."""
    load = format_load(result.load_before), format_load(result.load_after)
    return (
        f"{result.machine}; torch {result.torch}, {threads(result)}; "
        f"{result.rounds} round{'s' * (result.rounds != 1)} of at least {result.min_time:g} s per variant, "
        "interleaved; "
        f"load average (1/5/15 min) {load[0]} before, {load[1]} after"
    )


def format_load(load: Sequence[float]) -> str:
    """A load average (1, 5 and 15 minutes) as ``1.2/1.3/1.6``."""
    return "/".join(f"{x:.1f}" for x in load)


def threads(result: BenchResult) -> str:
    return f"{result.threads} thread{'s' * (result.threads != 1)} " + (
        "(incdsl's default)" if result.threads_default else "(set for the run)"
    )


def summary(result: BenchResult) -> str:
    c, h, w = result.input
    source = result.source_seconds
    return (
        f"{result.network} ({result.spec}): {h}x{w}x{c} input, {result.params:,} params, "
        f"{result.macs:,} multiply-adds; incdsl compile takes {source.median * 1000:.0f} ms "
        f"({source.low * 1000:.0f}-{source.high * 1000:.0f})"
    )


# How readily a column leaves a narrow terminal (0: never; larger: sooner), by header.
PRIORITIES = {"optimized / plain": 2, "compiled / plain": 2, "compile s": 1}


def _columns(headers) -> tuple[Column, ...]:
    """Figures, but for the mode (and spec) and the ratios, which wrap before their spread."""

    def column(header: str) -> Column:
        if header in ("mode", "spec"):
            return Column(header)
        kind = "text" if header.endswith("plain") else "figure"
        return Column(header, kind, PRIORITIES.get(header, 0), align="right")

    return tuple(map(column, headers))


def table(result: BenchResult) -> Table:
    """The table of ``incdsl bench``, in the style of ``incdsl stats``'s; the network and how it was
    measured under it."""
    rows = tuple(tuple(cells(result, mode, batch)) for mode, batch in result.rows())
    title = f"{result.network}: images per second, and ratios to the plain build"
    footer = (*verdicts(result), summary(result), "", conditions(result))
    return Table(title, _columns(headers([result])), rows, footer)


def document(result: BenchResult) -> Document:
    """What ``incdsl bench`` prints, in every format."""
    return Document((table(result),), to_dict(result))


def markdown_table(results: Sequence[BenchResult]) -> str:
    """One markdown table for several specs (a ``spec`` column first): the README's."""
    engines = engines_of(results)
    rows = tuple(
        (Path(result.spec).stem, *cells(result, mode, batch, engines))
        for result in results
        for mode, batch in result.rows()
    )
    return render.to_markdown(Table("", _columns(("spec", *headers(results))), rows)).rstrip("\n")


def to_markdown(result: BenchResult) -> str:
    return render.to_markdown(table(result))


def to_dict(result: BenchResult) -> dict:
    """The JSON of ``incdsl bench --format json`` (see the README's "Performance")."""
    from dataclasses import asdict

    def measurement(m: Measurement) -> dict:
        ratio = m.ratio
        return {
            "mode": m.mode,
            "batch": m.batch,
            "variant": m.variant,
            "img_per_s": m.img_per_s,
            "ratio": None if ratio is None else asdict(ratio),
            "rates": list(m.rates),
            "ratios": list(m.ratios),
            "compile_seconds": m.compile_seconds,
            "error": m.error,
            "max_diff": m.max_diff,
        }

    return {
        "spec": result.spec,
        "network": result.network,
        "input": list(result.input),
        "params": result.params,
        "macs": result.macs,
        "measurements": [measurement(m) for m in result.measurements],
        "source_seconds": asdict(result.source_seconds),
        "rounds": result.rounds,
        "min_time": result.min_time,
        "seed": result.seed,
        "threads": result.threads,
        "threads_default": result.threads_default,
        "torch": result.torch,
        "machine": result.machine,
        "load_average": {"before": list(result.load_before), "after": list(result.load_after)},
        "started": result.started,
    }


def from_dict(data: dict) -> BenchResult:
    """The result that :func:`to_dict` gave ``data`` (to render saved runs again)."""
    measurements = tuple(
        Measurement(
            m["mode"], m["batch"], m["variant"], tuple(m["rates"]), tuple(m["ratios"]),
            m["compile_seconds"], m["error"], m.get("max_diff"),
        )
        for m in data["measurements"]
    )  # fmt: skip
    return BenchResult(
        spec=data["spec"],
        network=data["network"],
        input=tuple(data["input"]),
        params=data["params"],
        macs=data["macs"],
        measurements=measurements,
        source_seconds=Spread(**data["source_seconds"]),
        rounds=data["rounds"],
        min_time=data["min_time"],
        seed=data["seed"],
        threads=data["threads"],
        threads_default=data["threads_default"],
        torch=data["torch"],
        machine=data["machine"],
        load_before=tuple(data["load_average"]["before"]),
        load_after=tuple(data["load_average"]["after"]),
        started=data["started"],
    )


# measuring ------------------------------------------------------------------------------------------
class _Bench:
    """The rows of one spec: warm-up, calibration and interleaved rounds."""

    def __init__(self, net: Network, rounds: int, min_time: float, say: Callable[[str], None]):
        self.net, self.rounds, self.min_time, self.say = net, rounds, min_time, say

    def inputs(self, batch: int):
        import torch

        return torch.randn(batch, *self.net.input.as_list())

    def eval_row(self, batch: int, plain, optimized, compile: bool, runners=None) -> list[Measurement]:
        import torch

        x = self.inputs(batch)
        array = x.numpy()
        steps = {"plain": lambda: plain(x), "optimized": lambda: optimized(x)}
        with torch.inference_mode():
            outcome = None
            if compile:
                torch._dynamo.reset()  # a fresh cache per row: each shape compiles once, as a user's would
                model = torch.compile(optimized, dynamic=False)
                outcome = self.compiled(f"eval at batch {batch}", lambda: model(x), steps)
            skipped = []
            for name, runner in (runners or {}).items():
                if isinstance(runner, str):
                    skipped.append(Measurement("eval", batch, name, (), (), error=runner))
                else:
                    steps[name] = functools.partial(runner, array)
            diffs = _differences(steps)
            measured = _with_compile(self.measure("eval", batch, steps), outcome)
            return [replace(m, max_diff=diffs.get(m.variant)) for m in measured] + skipped

    def train_row(self, batch: int, plain, compile: bool) -> list[Measurement]:
        import torch

        x = self.inputs(batch)
        labels = torch.randint(0, self.net.classes or 1, (batch,))
        steps = {"plain": self.train_step(copy.deepcopy(plain).train(), x, labels)}
        outcome = None
        if compile:
            torch._dynamo.reset()
            model = torch.compile(copy.deepcopy(plain).train(), dynamic=False)
            step = self.train_step(model, x, labels)
            outcome = self.compiled(f"a training step at batch {batch}", step, steps)
        return _with_compile(self.measure("train", batch, steps), outcome)

    def train_step(self, model, x, labels) -> Callable[[], None]:
        import torch

        from incdsl.train.losses import training_loss

        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        weights = {aux.name: aux.weight for aux in self.net.auxes}

        def step() -> None:
            loss = training_loss(model(x), labels, weights, 0.0)  # the trainer's: aux heads weighted
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def compiled(self, what: str, step: Callable[[], object], steps: dict) -> _Compiled:
        """Compile by calling once; on success ``step`` joins ``steps`` as "compiled"."""
        self.say(f"compiling {self.net.name} for {what} (torch.compile, inductor)")
        started = time.perf_counter()
        try:
            step()
        except Exception as error:  # a failure to compile is a result to report, not a crash
            first = str(error).strip().splitlines()[:1]
            message = ": ".join([type(error).__name__, *first])
            self.say(f"torch.compile failed: {message}")
            return _Compiled(None, message)
        steps["compiled"] = step
        return _Compiled(time.perf_counter() - started, None)

    def measure(self, mode: str, batch: int, steps: dict) -> list[Measurement]:
        """Warm up and calibrate each variant, then time them in turns: A B C, C B A, ..."""
        self.say(f"timing {self.net.name}, {mode} at batch {batch}: {', '.join(steps)}")
        calls = {name: self.calibrate(step) for name, step in steps.items()}
        names = list(steps)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(self.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                rates[name].append(batch * calls[name] / _seconds(steps[name], calls[name]))
        plain = rates["plain"]
        return [
            Measurement(mode, batch, name, tuple(r), tuple(v / p for v, p in zip(r, plain)))
            for name, r in rates.items()
        ]

    def calibrate(self, step: Callable[[], object]) -> int:
        """Calls per measurement: enough whole batches to last ``min_time`` (a warm-up call first)."""
        step()
        once = _seconds(step, 1)
        return max(1, round(self.min_time / once)) if once > 0 else 1


@dataclass(frozen=True)
class _Compiled:
    seconds: float | None
    error: str | None


def _with_compile(measurements: list[Measurement], outcome: _Compiled | None) -> list[Measurement]:
    """The compiled variant's measurement gets its compile time; a failed one is added, without rates."""
    if outcome is None:
        return measurements
    if outcome.error is not None:
        mode, batch = measurements[0].mode, measurements[0].batch
        return [*measurements, Measurement(mode, batch, "compiled", (), (), error=outcome.error)]
    return [
        replace(m, compile_seconds=outcome.seconds) if m.variant == "compiled" else m for m in measurements
    ]


def _differences(steps: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The largest absolute difference of each step's logits from the first step's (the plain build)."""
    import torch

    outputs = {name: torch.as_tensor(step()) for name, step in steps.items()}
    reference = outputs[next(iter(steps))]
    return {name: (out.float() - reference).abs().max().item() for name, out in outputs.items()}


def _seconds(step: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        step()
    return time.perf_counter() - started
