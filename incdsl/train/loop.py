"""The training loop: set up, then one epoch after another of train, evaluate, log, checkpoint.

Read top to bottom, as nanoGPT's train.py. Every epoch draws its randomness (data order, augmentation,
dropout) from ``(seed, epoch, rank)`` alone, so a run resumed from epoch k's checkpoint repeats
epochs k+1... of the uninterrupted run exactly, and each torchrun process draws its own.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from incdsl import memory
from incdsl.memory import human_bytes
from incdsl.rundir import BEST, CHECKPOINT, write_run_info
from incdsl.threads import describe, using
from incdsl.train import Interrupted, RunFailed, TrainError
from incdsl.train.augment import augment_batch, mix_batch
from incdsl.train.checkpoint import (
    CheckpointNotWritten,
    check_contents,
    check_optimizer_state,
    load_checkpoint,
    load_weights,
    loading,
    remove_temporaries,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from incdsl.train.config import TrainConfig, lr_note
from incdsl.train.data import BalancedSampler, Split, check_readable, collate, open_split, split_labels
from incdsl.train.distributed import (
    Processes,
    share_buffers,
    start_processes,
    stop_processes,
    sum_over_processes,
    sync_batchnorm,
    wait_for_all,
)
from incdsl.train.ema import EMA
from incdsl.train.evaluate import amp_dtype, autocast, evaluate
from incdsl.train.logs import METRICS, MetricsLog, progress, say, summary, warn
from incdsl.train.losses import training_loss
from incdsl.train.models import ModelBundle, load_model
from incdsl.train.recipes import Recipe, build_optimizer, build_scheduler, recipe_of
from incdsl.train.views import eval_view, train_view

BAR_EVERY = 10  # steps between progress-bar updates


def train(config: TrainConfig) -> list[dict[str, Any]]:
    """Train ``config.target`` on ``config.data``; every epoch's metrics (a resume's earlier ones too).

    >>> from incdsl.train import make_config
    >>> history = train(make_config({"target": "mini_googlenet", "data": "digits", "out": "runs/digits"}))
    ... # doctest: +SKIP
    """
    processes = start_processes(config.device)
    try:
        with using(config.threads) as (count, why):  # before any work: torch's pools start at its first
            say(describe(count, why), processes.is_main)
            history = run(config, processes)
        wait_for_all(processes)  # no process tears the group down while another still uses it
        return history
    finally:
        stop_processes(processes)


def run(config: TrainConfig, processes: Processes) -> list[dict[str, Any]]:
    recipe = recipe_of(config)  # the named recipe with every setting the config overrides
    device, main = processes.device, processes.is_main
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(config.seed)
    check_run_dir(config.out, config.resume)

    # -- data, read at the model's input shape; the classifier follows the data's classes. The model is
    # measured on the meta device first: one that cannot fit is refused before anything is allocated.
    copies = training_copies(recipe)
    size = config.input_size or None  # --input-size: the spec built for N x N inputs
    bundle = load_model(config.target, fits_on=device, copies=copies, input_size=size)
    train_split, val_split = open_splits(config, recipe, bundle)
    if len(train_split.classes) != bundle.num_classes:
        bundle = load_model(
            config.target,
            num_classes=len(train_split.classes),
            fits_on=device,
            copies=copies,
            input_size=size,
        )
    check_budget(bundle, main)
    # -- what a training step will hold at this batch size: printed, and refused when it cannot fit
    check_step_memory(config, recipe, bundle, processes)
    train_loader, val_loader = make_loaders(train_split, val_split, config, processes)
    if main:
        warn_about_the_setup(config, len(train_split.dataset), len(train_loader))
    steps_per_epoch = math.ceil(len(train_loader) / config.accumulate)  # optimizer steps

    # -- model, optimizer, per-step learning-rate schedule, Polyak averaging
    model = sync_batchnorm(bundle.module.to(device, memory_format=layout), processes, config.sync_bn)
    optimizer = build_optimizer(recipe, model, config.lr)
    scheduler = build_scheduler(recipe, optimizer, steps_per_epoch, config.epochs)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and amp_dtype(device.type) == "fp16")

    # -- a fresh run directory, or the state of the run to resume
    history: list[dict[str, Any]] = []
    state = resumable_state(config, main)
    if state is not None:
        history = resume(state, config, train_split.classes, model, optimizer, scheduler, ema, main)
        say(
            f"resumed from epoch {len(history)} ({config.out / CHECKPOINT}), up to epoch {config.epochs}",
            main,
        )
    wait_for_all(processes)  # every process has checked the run directory before rank 0 writes to it
    if main:
        make_run_dir(config.out)
        log = MetricsLog(config.out, history)
        write_run_info(
            config,
            bundle,
            images_per_epoch=len(train_loader) * config.batch_size,
            settings=settings_of(config),
        )
    best_top1 = max((record["val_top1"] for record in history), default=-1.0)
    first_epoch = len(history) + 1
    if first_epoch > config.epochs:
        say(
            f"{config.out} already holds {len(history)} epochs; nothing to do for --epochs {config.epochs}",
            main,
        )

    # -- the model that takes the steps: shared weights, wrapped for torchrun and compiled on request
    ddp = DistributedDataParallel(model) if processes.distributed else None
    stepper = torch.compile(ddp or model) if config.compile else ddp or model
    batches = len(train_loader)

    saved = len(history)  # the epoch checkpoint.pt holds
    writing = None  # (epoch, the old file's identity) while checkpoint.pt is being replaced
    epoch = first_epoch
    clock = Clock(batches * (config.epochs - len(history)))  # this session's time, for the ETA
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            generator = seed_epoch(config.seed, epoch, processes.rank)
            train_loader.sampler.set_epoch(epoch)
            stepper.train()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum, images, skipped = torch.zeros((), device=device), 0, 0
            started = time.perf_counter()
            bar = progress(train_loader, epoch, config.epochs, main)
            lines = main and bool(config.log_every) and bar.disable  # no terminal: a line every N steps
            for step, (pixels, labels, unreadable) in enumerate(bar):
                skipped += check_readable(unreadable, config.skip_unreadable)
                group, stepping = accumulation(step, batches, config.accumulate)
                if len(labels):
                    pixels, labels = (
                        pixels.to(device, non_blocking=True),
                        labels.to(device, non_blocking=True),
                    )
                    inputs = augment_batch(pixels, recipe.augment, generator)
                    inputs, lam = mix_batch(inputs, config.mixup, config.cutmix, generator)
                    with autocast(device, config.amp):
                        outputs = stepper(inputs.contiguous(memory_format=layout))
                        loss = mixed_loss(outputs, labels, lam, bundle.aux_weights, recipe.label_smoothing)
                    with ddp.no_sync() if ddp and not stepping else contextlib.nullcontext():
                        scaler.scale(loss / group if group > 1 else loss).backward()
                    loss_sum += loss.detach() * len(labels)
                    images += len(labels)
                if stepping:
                    optimizer_step(model, optimizer, scaler, scheduler, ema, recipe.grad_clip)
                clock.tick()
                if len(labels) and (step % BAR_EVERY == 0 or lines and (step + 1) % config.log_every == 0):
                    value = loss.item()
                    if not processes.distributed:  # under torchrun every process stops at the epoch's end
                        check_finite("training loss", value, epoch, config, saved, f" (step {step + 1})")
                    rate = images * processes.world_size / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{value:.3f}", img_s=f"{rate:.0f}", eta=clock.eta(), refresh=False)
                    if lines and (step + 1) % config.log_every == 0:
                        say(
                            step_line(epoch, config.epochs, step + 1, batches, value, rate, clock.eta()), main
                        )
            seconds = time.perf_counter() - started
            loss_total, images_total, skipped_total = sum_over_processes(
                [loss_sum.item(), images, skipped], processes
            )
            check_finite("training loss", loss_total / max(images_total, 1), epoch, config, saved)

            # evaluate the averaged weights when the recipe keeps them (Polyak averaging)
            evaluated = (ema.module if ema else model).eval()
            share_buffers(evaluated, processes)  # the checkpoint's statistics, on every process
            val = evaluate(
                [evaluated],
                val_loader,
                processes,
                config.amp,
                layout,
                config.skip_unreadable,
                bundle.num_classes,
            )
            check_finite("validation loss", val.loss, epoch, config, saved)
            record = {
                "epoch": epoch,
                "train_loss": loss_total / max(images_total, 1),
                "val_loss": val.loss,
                "val_top1": val.top1,
                "val_top5": val.top5,
                "lr": lr,
                "img_per_s": images_total / seconds,
                **class_figures(val),
            }
            history.append(record)
            say(f"{summary(record, config.epochs)}  eta {clock.eta()}", main)
            if skipped_total or val.unreadable:
                counts = f"{int(skipped_total)} training and {val.unreadable} validation images"
                say(f"skipped {counts} that could not be decoded", main)

            # rank 0 writes: the metrics line first, then the checkpoint (resume trims the log to it)
            if main:
                log.write(record)
                state = checkpoint_state(
                    config, processes, bundle, train_split, model, optimizer, scheduler, ema, history, recipe
                )
                writing = (epoch, file_id(config.out / CHECKPOINT))
                write_checkpoint(state, config.out / CHECKPOINT, config, saved)
                saved, writing = epoch, None
                if val.top1 > best_top1:
                    best_top1 = val.top1
                    write_checkpoint(state, config.out / BEST, config, saved)
            saved = epoch
    except KeyboardInterrupt:
        if writing and file_id(config.out / CHECKPOINT) != writing[1]:  # stopped after the rename
            saved = writing[0]
        raise Interrupted(interrupted_message(config, epoch, saved)) from None
    finally:
        if main:
            log.close()
    if history and first_epoch <= config.epochs:
        say(closing_summary(config, history, clock.elapsed(), first_epoch), main)
    return history


def mixed_loss(outputs, labels, lam: float, aux_weights: dict[str, float], smoothing: float):
    """The training loss; for a batch mixed with its reverse (mixup, CutMix), weighted by ``lam``."""
    loss = training_loss(outputs, labels, aux_weights, smoothing)
    if lam < 1.0:
        loss = lam * loss + (1.0 - lam) * training_loss(outputs, labels.flip(0), aux_weights, smoothing)
    return loss


def accumulation(step: int, batches: int, accumulate: int) -> tuple[int, bool]:
    """Gradient accumulation: how many batches the group of batch ``step`` has (its loss is divided by
    that), and whether the optimizer steps after it (after every ``accumulate`` batches, and the
    epoch's last).

    >>> [accumulation(step, 5, 2) for step in range(5)]
    [(2, False), (2, True), (2, False), (2, True), (1, True)]
    """
    group = min(accumulate, batches - step + step % accumulate)
    return group, (step + 1) % accumulate == 0 or step + 1 == batches


def optimizer_step(model, optimizer, scaler, scheduler, ema, grad_clip: float | None) -> None:
    """One optimizer step on the accumulated gradients: clipped, unscaled (fp16), then the schedule's
    next learning rate and the moving average's update."""
    if grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if ema:
        ema.update()


class Clock:
    """This session's elapsed time and the whole run's estimated time left, from the batches done."""

    def __init__(self, batches_left: int):
        self.started, self.done, self.left = time.perf_counter(), 0, batches_left

    def tick(self) -> None:
        self.done += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> str:
        """The time the remaining batches take at this session's pace so far (validation included)."""
        if not self.done:
            return "?"
        return clock_time(self.elapsed() / self.done * max(0, self.left - self.done))


def clock_time(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_line(epoch: int, epochs: int, step: int, steps: int, loss: float, rate: float, eta: str) -> str:
    """A progress line for output that is not a terminal (a log file, a batch job)."""
    return f"epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4f}  {rate:.0f} img/s  eta {eta}"


def closing_summary(config: TrainConfig, history: list[dict[str, Any]], seconds: float, first: int) -> str:
    """The last lines of a run: the best epoch and its top-1, the time taken, where the checkpoints are."""
    best = max(history, key=lambda record: record["val_top1"])
    last = history[-1]["epoch"]
    session = f"epochs {first}-{last}" if first > 1 else f"{last} epoch{'s' * (last > 1)}"
    return (
        f"done: {session} in {clock_time(seconds)}; best val_top1 {best['val_top1']:.4f} at epoch "
        f"{best['epoch']}\n  {config.out / BEST} (epoch {best['epoch']}), "
        f"{config.out / CHECKPOINT} (epoch {history[-1]['epoch']}, to --resume)"
    )


CONFUSION_MAX_CLASSES = 100  # metrics.jsonl holds the confusion matrix up to this many classes


def class_figures(val) -> dict[str, Any]:
    """The per-class top-1 (None for a class without validation images) and, for up to
    CONFUSION_MAX_CLASSES classes, the confusion matrix (rows: true class, columns: predicted)."""
    figures: dict[str, Any] = {"val_class_top1": [top1 for _, top1 in val.per_class()]}
    if len(val.confusion) <= CONFUSION_MAX_CLASSES:
        figures["val_confusion"] = [list(row) for row in val.confusion]
    return figures


def warn_about_the_setup(config: TrainConfig, train_images: int, batches: int) -> None:
    """Warnings about settings that quietly waste data or the schedule; the learning rate's scaling."""
    note = lr_note(config)
    if note:
        say(note, True)
    unused = train_images - batches * config.batch_size
    if unused:
        warn(
            f"{unused} of the {train_images} training images are left out of each epoch: the last partial "
            f"batch of {config.batch_size} is dropped (the shuffle leaves out others each epoch)"
        )
    if config.warmup_epochs and config.epochs <= config.warmup_epochs:
        warn(
            f"--epochs {config.epochs} is not longer than the warm-up ({config.warmup_epochs:g} "
            f"epoch{'s' * (config.warmup_epochs != 1)}): "
            f"the whole run is warm-up (--warmup-epochs changes it)"
        )


def settings_of(config: TrainConfig) -> dict[str, Any]:
    """The resolved settings as plain JSON data, for run.json and the checkpoint."""
    return {
        key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for key, value in asdict(config).items()
        if key != "resume"
    }


def write_checkpoint(state: dict[str, Any], path: Path, config: TrainConfig, saved: int) -> None:
    """Save a checkpoint; a RunFailed that says what is kept when it cannot be written."""
    try:
        save_checkpoint(state, path)
    except CheckpointNotWritten as error:
        if (config.out / CHECKPOINT).exists():
            kept = f"{config.out / CHECKPOINT} still holds epoch {saved}"
            again = "run the same command with --resume to continue"
        else:
            kept, again = "no checkpoint was written", "run the same command again to start over"
        raise RunFailed(f"{error.message}; {kept}: {again}", hint=error.hint) from None


def file_id(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names (device, inode): an atomic replacement gives it a new one."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def training_copies(recipe: Recipe) -> int:
    """How many float tensors of the model's size training keeps: the weights, their gradients, the
    optimizer's state per weight and the EMA copy."""
    from incdsl.backends.pytorch.memory import optimizer_slots

    return 2 + optimizer_slots(recipe.optimizer, bool(recipe.momentum)) + (1 if recipe.ema_decay else 0)


def step_setting(config: TrainConfig, recipe: Recipe, processes: Processes):
    """What the activation-memory estimate is for (an incdsl.backends.pytorch.memory.Setting): this
    process's share
    of the batch, the recipe's optimizer and averaged copy, and --amp's dtype (bf16 on a CPU, fp16 on
    CUDA)."""
    from incdsl.backends.pytorch.memory import DEVICES, Setting

    kind = processes.device.type if processes.device.type in DEVICES else "cpu"
    return Setting(
        batch=config.batch_size // processes.world_size,
        training=True,
        dtype=amp_dtype(kind) if config.amp else "fp32",
        device=kind,
        optimizer=recipe.optimizer,
        averaged=bool(recipe.ema_decay),
        momentum=bool(recipe.momentum),
    )


def check_step_memory(config: TrainConfig, recipe: Recipe, bundle: ModelBundle, processes: Processes) -> None:
    """Print the estimate of a training step's memory and refuse a batch whose peak cannot fit in the
    device's free memory, saying the largest that can. A spec's target only: a model file has no IR."""
    from incdsl.backends.pytorch.memory import describe, estimate, largest_batch

    main, device = processes.is_main, processes.device
    if bundle.spec_text is None:  # only its parameters were checked (load_model)
        return
    net = spec_network(bundle)
    setting = step_setting(config, recipe, processes)
    step = estimate(net, setting)
    held = step.weights if device.type == "cpu" else 0  # the model is built in RAM already
    free = memory.available_on(device)
    for line in describe(step):
        say(line, main)
    say(f"  available on {device}: {'unknown' if free is None else human_bytes(free + held)}", main)
    if free is None or step.peak - held <= free:
        return
    largest = largest_batch(net, setting, free + held)
    hint = (
        f"the largest batch that fits is {largest * processes.world_size}: "
        f"--batch-size {largest * processes.world_size}"
        if largest
        else "not even a batch of 1 fits: use a smaller model or a machine with more memory"
    )
    raise memory.OutOfMemory(
        f"{bundle.name}: a training step at batch {config.batch_size} needs about "
        f"{human_bytes(step.peak)}, more than the {human_bytes(free + held)} available on {device}",
        hint=hint,
    )


def check_budget(bundle: ModelBundle, main: bool) -> None:
    """The spec's compute budget, as ``incdsl check`` checks it, at the size the model is trained at:
    with --input-size, the multiply-adds at that size against the budget; a warning when they exceed
    it (the run goes on: the budget is the spec's design limit, not the trainer's)."""
    if bundle.spec_text is None:
        return
    from incdsl.analysis import report

    net = spec_network(bundle)
    stats = report.compute(net)
    size = "x".join(map(str, bundle.input_shape[1:]))
    if stats.budget is not None and stats.macs > stats.budget:
        if main:
            warn(
                f"{bundle.name} at {size}: {report.budget_verdict(stats.macs, stats.budget)}; "
                f"incdsl check would fail at this size"
            )
    elif bundle.input_size is not None:
        within = report.budget_verdict(stats.macs, stats.budget) if stats.budget else "no budget declared"
        say(f"{bundle.name} at {size} (--input-size): {stats.macs:,} multiply-adds; {within}", main)


def spec_network(bundle: ModelBundle):
    """The IR of the bundle's spec, with the classes and the input size it was built for."""
    from incdsl.train.models import spec_network as network

    return network(bundle.spec_text, bundle.name, bundle.num_classes, bundle.input_size)


def check_finite(
    what: str, value: float, epoch: int, config: TrainConfig, saved: int, where: str = ""
) -> None:
    """Stop the run, before anything is written, when a loss is not a finite number."""
    if math.isfinite(value):
        return
    kept = f"{config.out / CHECKPOINT} still holds epoch {saved}" if saved else "no checkpoint was written"
    raise RunFailed(
        f"the {what} is {value} in epoch {epoch}{where}: the run stopped; {kept}",
        hint=f"lower the learning rate (--lr {config.lr:g})",
    )


def interrupted_message(config: TrainConfig, epoch: int, saved: int) -> str:
    """One line: where the run stopped, and the command that continues it."""
    if saved:
        return (
            f"interrupted in epoch {epoch}; {config.out / CHECKPOINT} holds epoch {saved}: "
            f"run the same command with --resume to continue"
        )
    return (
        f"interrupted in epoch {epoch}, before the first checkpoint: run the same command again to start over"
    )


def open_splits(config: TrainConfig, recipe: Recipe, bundle: ModelBundle) -> tuple[Split, Split]:
    """The training split, read at the input size, and the validation split, read as evaluation views."""
    size, shape, held_out = bundle.input_shape[1:], bundle.input_shape, config.val_split
    read_train = partial(train_view, size=size)
    train = open_split(
        config.data, "train", shape, read_train, num_classes=bundle.num_classes, val_split=held_out
    )
    if len(train.classes) < 2:
        raise TrainError(
            f"the training data has a single class ({train.classes[0]}): there is nothing to tell apart",
            hint="a classifier needs a folder of images for each of at least two classes",
        )
    read_val = eval_view(1, size, recipe.augment.eval_crop)
    return train, open_split(config.data, "val", shape, read_val, train.classes, val_split=held_out)


def make_loaders(train: Split, val: Split, config: TrainConfig, processes: Processes):
    """Loaders of this process's share: training shuffled by (seed, epoch); every world_size-th val image."""
    if config.batch_size % processes.world_size:
        raise TrainError(
            f"batch size {config.batch_size} does not split over {processes.world_size} processes"
        )
    batch = config.batch_size // processes.world_size
    workers = config.workers if config.workers >= 0 else (8 if processes.device.type == "cuda" else 0)
    common = {
        "num_workers": workers,
        "pin_memory": processes.device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    rank, world = processes.rank, processes.world_size
    if config.balanced:  # every class equally likely: imbalanced data
        sampler = BalancedSampler(split_labels(train.dataset), world, rank, config.seed)
    else:
        sampler = DistributedSampler(
            train.dataset, world, rank, shuffle=True, seed=config.seed, drop_last=True
        )
    train_loader = DataLoader(
        train.dataset, batch, sampler=sampler, drop_last=True, collate_fn=collate, **common
    )
    if len(train_loader) == 0:
        more = " (or more fake images: fake:N)" if config.data.startswith("fake") else ""
        raise TrainError(
            f"the training split has {len(train.dataset)} images, less than one batch of {config.batch_size}",
            hint=f"lower --batch-size{more}",
        )
    val_share = Subset(val.dataset, range(rank, len(val.dataset), world))
    return train_loader, DataLoader(val_share, 2 * batch, collate_fn=collate, **common)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators from (seed, epoch, rank); return augmentation's."""
    global_seed, augment_seed = np.random.SeedSequence([seed, epoch, rank]).generate_state(2).tolist()
    random.seed(global_seed)
    np.random.seed(global_seed)
    torch.manual_seed(global_seed)
    return torch.Generator().manual_seed(augment_seed)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A TrainError when ``run_dir`` cannot be a run directory (a file, or inside one), or when a new
    run would overwrite a run that saved a checkpoint. A run that never completed one (interrupted, or
    its disk full, during its first epoch or its first save) holds nothing to keep: it is started over,
    with or without --resume."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise TrainError(f"--out {run_dir}: {path} is a file, not a folder")
            break
    if resume:
        if not (run_dir / CHECKPOINT).exists() and not never_checkpointed(run_dir):
            hint = "drop --resume to start a new run"
            if (run_dir / BEST).exists():
                hint = f"copy {run_dir / BEST} to {run_dir / CHECKPOINT} to continue from it"
            raise TrainError(f"no checkpoint at {run_dir / CHECKPOINT}", hint=hint)
    elif (run_dir / CHECKPOINT).exists() or (run_dir / BEST).exists():
        raise TrainError(
            f"{run_dir} already holds a run", hint="pass --resume to continue it, or choose another --out"
        )


def never_checkpointed(run_dir: Path) -> bool:
    """A run directory of a run that started (metrics.jsonl) but completed no checkpoint."""
    return (
        (run_dir / METRICS).exists() and not (run_dir / CHECKPOINT).exists() and not (run_dir / BEST).exists()
    )


def resumable_state(config: TrainConfig, main: bool = True) -> dict[str, Any] | None:
    """The checkpoint to resume from; None for a new run (or a --resume of a run that never completed
    its first checkpoint, which starts over)."""
    if never_checkpointed(config.out):
        say(
            f"{config.out} holds a run that never completed a checkpoint: starting it over from epoch 1", main
        )
        return None
    if not config.resume:
        return None
    state = load_checkpoint(config.out / CHECKPOINT)
    check_contents(state, config.out / CHECKPOINT)
    return state


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainError(f"cannot create the run directory {run_dir}: {error.strerror or error}") from None
    remove_temporaries(run_dir)


def checkpoint_state(
    config, processes, bundle, split, model, optimizer, scheduler, ema, history, recipe
) -> dict[str, Any]:
    """Everything a resume or an evaluation needs, in types ``torch.load(weights_only=True)`` reads."""
    return {
        "epoch": len(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema else None,
        "rng": rng_states(),
        "metrics": history,
        "classes": list(split.classes),
        "recipe": config.recipe,
        "augment": asdict(recipe.augment),  # evaluation views follow it (no mirrors without flips)
        "world_size": processes.world_size,
        "config": settings_of(config),
        "target": config.target,
        "spec_text": bundle.spec_text,
        "model_source": bundle.source,
    }


def resume(state, config, classes, model, optimizer, scheduler, ema, main=True) -> list[dict[str, Any]]:
    """Load a checkpoint's state into the run's objects; returns the metrics of the epochs it covers."""
    path = config.out / CHECKPOINT
    if state["recipe"] != config.recipe:
        raise TrainError(f"the checkpoint was trained with recipe {state['recipe']}, not {config.recipe}")
    if state["classes"] != list(classes):
        raise TrainError("the checkpoint was trained on other classes than the data's")
    load_weights(model, state["model"], f"{path} (its model)")
    if ema and state["ema"] is None or not ema and state["ema"] is not None:
        kept = "with" if state["ema"] is not None else "without"
        raise TrainError(
            f"{path}: the run was trained {kept} averaged weights (EMA); a resumed run cannot change that",
            hint=f"resume {kept} --ema, or start a new run (another --out)",
        )
    check_optimizer_state(optimizer, state["optimizer"], path)
    with loading(path, "optimizer state"):
        optimizer.load_state_dict(state["optimizer"])
    with loading(path, "learning-rate schedule"):
        scheduler.load_state_dict(state["scheduler"])
    if ema:
        load_weights(ema.module, state["ema"]["module"], f"{path} (its averaged weights)")
        ema.updates = state["ema"]["updates"]
    with loading(path, "random states"):
        restore_rng_states(state["rng"])
    run_lr = (state.get("config") or {}).get("lr")
    if isinstance(run_lr, float) and run_lr != config.lr and main:
        warn(
            f"--lr {config.lr:g} is ignored: a resumed run keeps its optimizer's state and learning-rate "
            f"schedule (base lr {run_lr:g}); start a new run (another --out) to change it"
        )
    return list(state["metrics"])
