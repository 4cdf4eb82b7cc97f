"""The GPU table of the README's "Performance" (issue 17, item 5): images per second at batch 256 in
bfloat16, eager and through torch.compile, and the fraction of the GPU's measured bf16 matmul rate
that each reaches; then the memory estimate (``incdsl stats --batch B --train``) against
``torch.cuda.max_memory_allocated`` and the bytes autograd saves.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--specs googlenet_tv,inception_v3,resnet50]
        [--batch 256] [--memory-batch 64] [--parts memory,speed] [--no-saved] [--no-compile]
        [--deadline 480] [--json FILE]
    PYTHONPATH=. python benchmarks/bench_gpu.py --device cpu --specs mini_googlenet --batch 4 --quick

What is measured, each on the same weights (``torch.manual_seed(0)``), random inputs in channels_last
(cuDNN's tensor cores want NHWC), ``cudnn.benchmark`` on:

- **the matmul rate**: an 8192 x 8192 x 8192 bf16 product, 3 warm-ups, then the mean of 10; the
  ceiling the "of matmul" column divides by;
- **train**: a training step as ``incdsl bench`` takes it (forward under bf16 autocast, the aux heads
  weighted into the loss as the spec says, backward, SGD with momentum), eager and with the module
  through ``torch.compile`` (inductor, default mode; its first steps, the compile, are timed apart);
- **eval**: the ``--optimize`` build (BatchNorm folded, sibling 1x1 convolutions fused) under bf16
  autocast and ``inference_mode``, eager and compiled; the plain build eager beside it.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one eager step (forward and
backward for train), independently of incdsl's own count, which is printed beside it (2 x its
multiply-adds, aux heads included in training, x3 for forward and backward); img/s is the median
of 3 timings of 10 steps after 3 warm-ups, with ``torch.cuda.synchronize`` around each timing.

Memory (``--memory-batch``, 64): for each spec, a fresh plain module (float32 weights, NCHW, as
``incdsl train`` runs without ``--channels-last``), SGD with momentum, ``cudnn.benchmark`` off (as
``incdsl train`` leaves it: with it on, cuDNN's trial workspaces took the peak to 2-8 times the
estimate); the peak of the third training step (``reset_peak_memory_stats`` before it) at the end
of its forward and over the whole step, in float32 and in bf16 autocast, against
``incdsl.backends.pytorch.memory.estimate``'s training peak for the same setting; and the bytes saved
for backward (``saved_tensors_hooks``, tests/memory_probe.py; ``--no-saved`` skips it) against the
estimate's. ``--parts memory`` or ``--parts speed`` runs one half.

``--deadline`` (seconds from the start) skips what would start after it (compiles first), so a run on
a lent machine ends inside its lease; what was skipped is listed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import incdsl  # noqa: E402
from incdsl.backends.pytorch.memory import Setting, estimate  # noqa: E402
from incdsl.memory import human_bytes  # noqa: E402
from incdsl.tools import bench  # noqa: E402
from incdsl.train.losses import training_loss  # noqa: E402

SPECS = ("googlenet_tv", "inception_v3", "resnet50")
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {text}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step, device, warmup: int = 3, steps: int = 10, repeats: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - started) / steps)
    return times


def matmul_rate(device, size: int, dtype=torch.bfloat16) -> float:
    """FLOP/s of a size^3 matrix product (2 size^3 operations), mean of 10 after 3 warm-ups."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    per = statistics.mean(seconds_per_step(lambda: a @ b, device, warmup=3, steps=10, repeats=1))
    return 2 * size**3 / per


def counted_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class Spec:
    """One spec's modules and inputs on the device."""

    def __init__(self, name: str, batch: int, device: torch.device):
        self.name, self.batch, self.device = name, batch, device
        self.net = incdsl.load(name)
        plain, optimized = bench.builds(self.net)
        self.plain = plain.to(device, memory_format=torch.channels_last)
        self.optimized = optimized.to(device, memory_format=torch.channels_last).eval()
        torch.manual_seed(1)
        shape = (batch, *self.net.input.as_list())
        self.x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, self.net.classes or 1, (batch,), device=device)
        self.aux = {aux.name: aux.weight for aux in self.net.auxes}
        report = incdsl.stats(self.net)
        self.macs, self.aux_macs = report.macs, sum(a.macs for a in report.aux)

    def stated_flops(self, mode: str) -> int:
        """incdsl's own count for a batch: 2 x multiply-adds; training runs the aux heads, and its
        backward does twice the forward's work (the gradients of inputs and of weights)."""
        if mode == "eval":
            return 2 * self.macs * self.batch
        return 3 * 2 * (self.macs + self.aux_macs) * self.batch

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, model):
        return train_step(model, self.x, self.labels, self.aux, autocast=True)

    def eval_step(self, model):
        def step():
            with torch.inference_mode(), self.autocast():
                return model(self.x)

        return step


def train_step(model, x, labels, aux: dict, autocast: bool, after_forward=lambda: None):
    """One training step as ``incdsl bench`` takes it: forward (bf16 autocast if ``autocast``), the
    aux heads weighted into the loss, backward, SGD with momentum; ``after_forward`` is called between
    the forward and the backward (where the memory estimate's peak is)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = training_loss(model(x), labels, aux, 0.0)
        after_forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(spec: Spec, mode: str, variant: str, step, flops: int, peak: float, compile_s=None) -> dict:
    times = seconds_per_step(step, spec.device)
    per = statistics.median(times)
    row = {
        "spec": spec.name, "mode": mode, "variant": variant, "batch": spec.batch,
        "img_per_s": spec.batch / per, "img_per_s_all": [spec.batch / t for t in times],
        "ms_per_step": 1000 * per, "flops_per_step": flops, "tflops": flops / per / 1e12,
        "of_matmul": flops / per / peak, "compile_s": compile_s, "incdsl_flops": spec.stated_flops(mode),
    }  # fmt: skip
    say(f"{spec.name} {mode} {variant}: {row['img_per_s']:,.0f} img/s, {row['tflops']:.1f} TFLOP/s "
        f"({100 * row['of_matmul']:.1f}% of matmul)" + (f", compile {compile_s:.0f} s" if compile_s else "")
        + f"; FLOPs per step {flops:,} counted, {row['incdsl_flops']:,} by incdsl's stats")  # fmt: skip
    return row


def compiled(step) -> tuple[object, float]:
    started = time.perf_counter()
    step()
    step()  # a training step's second call can recompile (the optimizer's state appears)
    return step, time.perf_counter() - started


def speed(spec: Spec, peak: float, compile: bool, deadline: float, skipped: list[str]) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    eager = spec.train_step(copy.deepcopy(spec.plain).train())
    eager()  # the optimizer's state exists before counting
    train_flops = counted_flops(eager)
    rows.append(measure(spec, "train", "eager", eager, train_flops, peak))
    plain_eval = spec.eval_step(spec.plain.eval())
    eval_flops = counted_flops(plain_eval)
    rows.append(measure(spec, "eval", "plain eager", plain_eval, eval_flops, peak))
    optimized = spec.eval_step(spec.optimized)
    rows.append(measure(spec, "eval", "optimized eager", optimized, eval_flops, peak))
    if not compile:
        return rows
    for mode, make in (
        ("train", lambda: spec.train_step(torch.compile(copy.deepcopy(spec.plain).train()))),
        ("eval", lambda: spec.eval_step(torch.compile(spec.optimized))),
    ):
        if time.monotonic() - START > deadline:
            skipped.append(f"{spec.name} {mode} compiled (deadline)")
            say(f"skipped {spec.name} {mode} compiled: past the deadline")
            continue
        torch._dynamo.reset()
        say(f"compiling {spec.name} for {mode}")
        try:
            step, seconds = compiled(make())
        except Exception as error:  # a failed compile is a result
            skipped.append(f"{spec.name} {mode} compiled: {type(error).__name__}: {str(error)[:200]}")
            say(skipped[-1])
            continue
        flops = train_flops if mode == "train" else eval_flops
        rows.append(measure(spec, mode, "compiled", step, flops, peak, seconds))
    return rows


def memory(name: str, batch: int, device: torch.device, saved_probe: bool = True) -> list[dict]:
    """The estimate's training peak and saved bytes against the device's, fp32 and bf16 autocast, with
    ``cudnn.benchmark`` off (as ``incdsl train`` runs): the peak at the end of the third step's
    forward (what the estimate describes: weights, the last step's gradients, the optimizer's state,
    the saved activations) and over the whole step (the backward adds cuDNN's workspaces)."""
    from memory_probe import saved_by_module

    net = incdsl.load(name)
    rows = []
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    cuda = device.type == "cuda"

    def peak():
        return torch.cuda.max_memory_allocated(device) if cuda else None

    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        module = incdsl.build_module(net).to(device).train()
        x = torch.randn(batch, *net.input.as_list(), device=device)
        labels = torch.randint(0, net.classes or 1, (batch,), device=device)
        aux = {a.name: a.weight for a in net.auxes}
        autocast = dtype == "bf16"
        saved = sum(saved_by_module(module, x, autocast).values()) if saved_probe else None
        peaks: list = []  # the allocator's peak at each forward's end
        step = train_step(
            module, x, labels, aux, autocast, after_forward=lambda peaks=peaks: peaks.append(peak())
        )
        for _ in range(3):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            step()
        forward_peak, step_peak = peaks[-1], peak()
        est = estimate(net, Setting(batch, training=True, dtype=dtype, device=device.type, optimizer="sgd"))
        row = {"spec": name, "batch": batch, "dtype": dtype, "estimate_peak": est.peak,
               "forward_peak": forward_peak, "step_peak": step_peak,
               "estimate_saved": est.saved, "measured_saved": saved}  # fmt: skip
        rows.append(row)
        say(f"memory {name} {dtype} batch {batch}: " + memory_cells(row))
        del module, step, x
        if cuda:
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = benchmark
    return rows


def memory_cells(row: dict) -> str:
    est = row["estimate_peak"]

    def against(measured) -> str:
        return f"{human_bytes(measured)} ({est / measured:.3f})" if measured else "-"

    saved = "-"
    if row["measured_saved"]:
        est_saved, measured = row["estimate_saved"], row["measured_saved"]
        saved = f"{human_bytes(est_saved)} / {human_bytes(measured)} ({est_saved / measured:.3f})"
    return f"{human_bytes(est)} | {against(row['forward_peak'])} | {against(row['step_peak'])} | {saved}"


def markdown(result: dict) -> str:
    lines = [
        f"{result['device_name']}, torch {result['torch']}, bf16 matmul "
        f"{result['matmul_tflops']:.0f} TFLOP/s ({result['matmul_size']}^3)",
        "",
        "| spec | mode | build | img/s | ms per batch | GFLOP per image (counted / incdsl) | TFLOP/s "
        "| of matmul | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["speed"]:
        compile_s = f"{r['compile_s']:.0f}" if r["compile_s"] else "-"
        lines.append(
            f"| {r['spec']} | {r['mode']} | {r['variant']} | {r['img_per_s']:,.0f} | {r['ms_per_step']:.1f} "
            f"| {r['flops_per_step'] / r['batch'] / 1e9:.2f} / {r['incdsl_flops'] / r['batch'] / 1e9:.2f} "
            f"| {r['tflops']:.1f} | {100 * r['of_matmul']:.1f}% | {compile_s} |"
        )
    lines += [
        "",
        "| spec | batch | dtype | peak, estimate | forward's end, measured (est / it) | whole step, measured "
        "| saved for backward, est / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["memory"]:
        lines.append(f"| {r['spec']} | {r['batch']} | {r['dtype']} | {memory_cells(r)} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=",".join(SPECS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds from the start")
    parser.add_argument("--quick", action="store_true", help="a small matmul (a smoke test off the GPU)")
    parser.add_argument("--parts", default="memory,speed", help="memory, speed or both")
    parser.add_argument("--no-saved", dest="saved", action="store_false", help="skip the saved-bytes probe")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device")
    torch.backends.cudnn.benchmark = True
    size = 512 if args.quick else 8192
    peak = matmul_rate(device, size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else bench.machine()
    say(f"{name}: bf16 matmul {peak / 1e12:.1f} TFLOP/s")
    result = {"device_name": name, "torch": torch.__version__, "matmul_tflops": peak / 1e12,
              "matmul_size": size, "batch": args.batch, "speed": [], "memory": [], "skipped": []}  # fmt: skip
    specs = [s for s in args.specs.split(",") if s]
    parts = set(args.parts.split(","))
    for spec in specs if "memory" in parts else ():  # memory first: quick, and half of what this is for
        result["memory"] += memory(spec, args.memory_batch, device, args.saved)
    for spec in specs if "speed" in parts else ():
        result["speed"] += speed(
            Spec(spec, args.batch, device), peak, args.compile, args.deadline, result["skipped"]
        )
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
