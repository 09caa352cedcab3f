"""The training loop of one rule: epochs, evaluation, diagnostics, metrics, checkpoints, signals, budget.

Exact resume: the shuffle order of epoch e depends only on (seed, e) (the loader's generator is re-seeded,
the DistributedSampler gets set_epoch(e)); a checkpoint stores the model, the optimizer(s) or TP trainer
state, the epoch and the batch reached, the global RNG states at the start of that epoch and at the
checkpoint, and the epoch's running sums. Resuming mid-epoch replays the epoch's order, skips the batches
already trained (they are loaded, not trained on), then restores the RNG state of the checkpoint. On the CPU
a resumed run equals an uninterrupted one bit for bit with workers=0 (random augmentation draws from the
global generator in the main process, which the checkpoint restores). With workers>0 the shuffle order is
still exact, but random augmentations after a resume differ: persistent workers keep their own generators,
which a resumed run re-seeds.

Nothing is lost: the checkpoint of an epoch is written before its evaluation (a stop signal during the
evaluation keeps it, and the resumed run evaluates that epoch first), ``checkpoint_every`` steps add mid-epoch
checkpoints, and an exception inside an epoch writes the checkpoint of the last completed step before it
propagates. A resume refuses a checkpoint written with another seed, batch size, steps per epoch or world size.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoints, distributed
from .data import build_loaders
from .errors import UsageError
from .models import build_model
from .presets import Hyper
from .records import Records, best_row
from .rules import make_learner

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunOptions:
    """What one rule's run needs besides its hyperparameters (shared by every rule of a comparison)."""
    dataset: str
    arch: str
    schedule: str = "alternating"
    seed: int = 0
    amp: bool = False
    workers: int = 0
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    eval_train: bool = True
    probe_size: int = 256
    checkpoint_every: int = 0    # steps between mid-epoch checkpoints (0: at epoch ends only)


class StopFlag:
    """Set by SIGINT/SIGTERM while a run is in progress; the loop stops after the current batch and saves a
    checkpoint. A second signal stops at once (KeyboardInterrupt), without a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Result:
    rule: str
    label: str
    status: str                  # "finished", "budget" (stopped by --max-minutes) or "interrupted"
    epochs: float                # epochs trained (fractional when stopped mid-epoch)
    seconds: float
    rows: list = field(default_factory=list)
    final: dict | None = None    # last evaluated row
    best: dict | None = None     # row with the lowest test error


class _Stopped(Exception):
    """A stop signal arrived during an evaluation."""


# The settings a resumed run must share with its checkpoint: option -> how the CLI spells it.
_RESUME_SETTINGS = {"seed": "--seed", "batch_size": "--batch-size", "steps_per_epoch": "--steps-per-epoch",
                    "world_size": "the number of processes (torchrun)"}


def resume_settings(opts: RunOptions, h: Hyper, world_size: int) -> dict:
    return {"seed": opts.seed, "batch_size": h.batch_size, "steps_per_epoch": opts.steps_per_epoch,
            "world_size": world_size}


def check_resume(path: str, ckpt: dict, settings: dict) -> None:
    """A resumed run keeps the settings its checkpoint was written with; the message names the first that
    changed."""
    for name, was in ckpt.get("settings", {}).items():
        now = settings.get(name)
        if now != was:
            raise UsageError(f"--resume: {path} was written with {_RESUME_SETTINGS.get(name, name)} "
                             f"{'all' if was is None else was}, not {'all' if now is None else now}; "
                             "a resumed run keeps the settings it started with")


def _loader_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def evaluate(net, loader, device, amp: bool, num_classes: int, stop: "StopFlag | None" = None) -> dict:
    """Loss, top-1 and top-5 error (%) over a loader, summed across ranks. A stop signal (any rank) ends it
    early with _Stopped."""
    net.eval()
    loss = top1 = top5 = count = 0.0
    k = min(5, num_classes)
    with torch.no_grad():
        for x, y in loader:
            if stop is not None and distributed.any_rank(stop.signum is not None, device):
                raise _Stopped
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                logits = net(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            hit = logits.topk(k, dim=1).indices == y[:, None]
            top1 += hit[:, 0].sum().item()
            top5 += hit.any(dim=1).sum().item()
            count += y.shape[0]
    loss, top1, top5, count = distributed.all_sum([loss, top1, top5, count], device)
    return {"loss": loss / count, "error": 100.0 * (1 - top1 / count), "top5_error": 100.0 * (1 - top5 / count)}


def _probe_batch(dataset, n: int, device):
    xs, ys = zip(*(dataset[i] for i in range(min(n, len(dataset)))))
    return torch.stack(xs).to(device), torch.as_tensor(ys).to(device)


def _set_lr(learner, h: Hyper, epoch: int) -> None:
    if h.lr_step <= 0:
        return
    for opt in learner.optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * h.lr_gamma ** (epoch // h.lr_step)


def run_rule(opts: RunOptions, rule: str, label: str, h: Hyper, bundle, folder: str, *,
             ctx: distributed.Context, device: torch.device, resume: bool, stop: StopFlag) -> Result:
    """Train one rule for h.epochs epochs (or until the budget or a signal), evaluating after every epoch."""
    torch.manual_seed(opts.seed)  # the same initial weights for every rule of a comparison
    model = build_model(opts.arch, dataset=bundle.like, num_classes=bundle.num_classes,
                        input_shape=bundle.input_shape)
    learner = make_learner(rule, model, h, arch=opts.arch, schedule=opts.schedule,
                           num_classes=bundle.num_classes, seed=opts.seed, device=device,
                           distributed=ctx.distributed, amp=opts.amp)
    if h.batch_size % ctx.world_size:
        raise UsageError(f"--batch-size {h.batch_size} (the global batch) is not divisible by the "
                         f"{ctx.world_size} processes")
    train_loader, test_loader = build_loaders(bundle, h.batch_size // ctx.world_size, workers=opts.workers,
                                              seed=opts.seed, distributed=ctx.distributed)
    probe = _probe_batch(bundle.train, opts.probe_size, device)
    steps = len(train_loader) if opts.steps_per_epoch is None else min(opts.steps_per_epoch, len(train_loader))

    path = os.path.join(folder, CHECKPOINT)
    settings = resume_settings(opts, h, ctx.world_size)
    epoch, batch, elapsed = 0, 0, 0.0
    rng_epoch = rng_now = running = pending_row = None
    if ctx.is_main and os.path.isdir(folder):
        checkpoints.remove_stale_temporaries(folder)
    if resume and os.path.isfile(path):
        ckpt = checkpoints.load(path)
        meta = (ckpt.get("rule"), ckpt.get("dataset"), ckpt.get("arch"))
        if meta != (rule, bundle.name, opts.arch):
            raise UsageError(f"checkpoint {path} was written for rule {meta[0]} on {meta[1]}/{meta[2]}, "
                             f"not {rule} on {bundle.name}/{opts.arch}")
        check_resume(path, ckpt, settings)
        try:
            learner.load_state_dict(ckpt["learner"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"checkpoint {path} does not match this model: {first[:200]}") from None
        epoch, batch, elapsed = ckpt["epoch"], ckpt["batch"], ckpt["elapsed"]
        rng_epoch, rng_now, running = ckpt["rng_epoch_start"], ckpt["rng"], ckpt["running"]
        pending_row = ckpt.get("pending_row")
        if batch == 0:
            checkpoints.set_rng_state(rng_now)
    records = Records(folder, enabled=ctx.is_main, tensorboard=opts.tensorboard,
                      resume_after_epoch=epoch if resume else None)

    def save(finished: bool, pending: dict | None = None, barrier: bool = True) -> None:
        """pending: the epoch's row, when the checkpoint is written before its evaluation."""
        if ctx.is_main:
            checkpoints.save_atomic({
                "format": checkpoints.FORMAT_VERSION, "rule": rule, "dataset": bundle.name, "arch": opts.arch,
                "settings": settings, "epoch": epoch, "batch": batch, "finished": finished, "elapsed": elapsed,
                "learner": learner.state_dict(), "rng_epoch_start": rng_epoch, "rng": checkpoints.rng_state(),
                "running": running, "pending_row": pending}, path)
        if barrier:
            distributed.barrier()

    def evaluate_and_record(row: dict) -> None:
        """Evaluate, record and print the epoch's row, then checkpoint again without it pending."""
        row.update(_evaluations(learner, train_loader, test_loader, opts, bundle, device, stop))
        if ctx.is_main:
            row.update(learner.diagnostics(*probe))
        records.add(row)
        _print_epoch(label, row, h.epochs, ctx)
        save(finished=epoch >= h.epochs)

    started = time.monotonic() - elapsed
    budget = None if opts.max_minutes is None else opts.max_minutes * 60.0
    status = "finished"
    if pending_row is not None and pending_row.get("complete", True):
        try:  # the evaluation a stop interrupted, before anything else
            evaluate_and_record(dict(pending_row))
        except _Stopped:
            status = "interrupted"
    while epoch < h.epochs and status == "finished":
        _set_lr(learner, h, epoch)
        if batch == 0:
            rng_epoch = checkpoints.rng_state()
            running = {"loss": 0.0, "correct": 0.0, "count": 0, "extra": {}, "extra_n": 0}
        else:
            checkpoints.set_rng_state(rng_epoch)
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(_loader_seed(opts.seed, epoch))
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        batches = iter(train_loader)
        if batch:
            for _ in itertools.islice(batches, batch):
                pass
            checkpoints.set_rng_state(rng_now)
        bar = tqdm(total=steps, initial=batch, desc=f"{label} {epoch + 1}/{h.epochs}", leave=False,
                   dynamic_ncols=True, disable=(None if opts.progress else True) if ctx.is_main else True)
        pending: list = []
        loop_started, seen = time.monotonic(), 0  # training throughput of this sitting (no evaluation)
        try:
            while batch < steps:
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                s = learner.train_step(x, y)
                seen += x.shape[0]
                pending.append(s)
                batch += 1
                bar.update(1)
                if batch % opts.log_every == 0 or batch == steps:
                    _fold(running, pending)
                    pending = []
                    bar.set_postfix(loss=f"{running['loss'] / max(running['count'], 1):.4f}",
                                    acc=f"{100.0 * running['correct'] / max(running['count'], 1):.2f}%")
                over_budget = budget is not None and time.monotonic() - started > budget
                if distributed.any_rank(stop.signum is not None or over_budget, device) and batch < steps:
                    status = "interrupted" if stop.signum is not None else "budget"
                    break
                if opts.checkpoint_every and batch % opts.checkpoint_every == 0 and batch < steps:
                    _fold(running, pending)
                    pending = []
                    elapsed = time.monotonic() - started
                    save(finished=False)
        except Exception:
            # the last completed step's checkpoint, then the error (no barrier: the other ranks may not fail)
            _fold(running, pending)
            elapsed = time.monotonic() - started
            save(finished=False, barrier=False)
            raise
        finally:
            bar.close()
        _fold(running, pending)
        elapsed = time.monotonic() - started
        if status == "interrupted":
            save(finished=False)
            break
        row = {"epoch": epoch + 1, "complete": status == "finished", "epochs": epoch + batch / steps,
               "seconds": round(elapsed, 3)}
        row["images_per_second"] = seen * ctx.world_size / max(time.monotonic() - loop_started, 1e-9)
        if learner.optimizers:
            row["lr"] = learner.optimizers[0].param_groups[0]["lr"]
        row.update(_running_metrics(running, device))
        if status == "finished":
            learner.end_epoch()
            epoch, batch = epoch + 1, 0
        save(finished=epoch >= h.epochs, pending=row)  # before the evaluation, which a signal may stop
        try:
            evaluate_and_record(row)
        except _Stopped:
            status = "interrupted"
    records.close()
    rows = records.rows
    finals = [r for r in rows if "test_error" in r]
    return Result(rule, label, status, epochs=epoch + batch / steps, seconds=elapsed, rows=rows,
                  final=finals[-1] if finals else None, best=best_row(rows))


def _fold(running: dict, pending: list) -> None:
    """Add steps' sums to the epoch's running totals (one device sync per log line, not per step)."""
    for s in pending:
        running["loss"] += float(s.loss_sum)
        running["correct"] += float(s.correct)
        running["count"] += s.count
        if s.extra:
            for k, v in s.extra.items():
                running["extra"][k] = running["extra"].get(k, 0.0) + v
            running["extra_n"] += 1


def _running_metrics(running: dict, device) -> dict:
    loss, correct, count = distributed.all_sum([running["loss"], running["correct"], running["count"]], device)
    out = {"train_loss_running": loss / max(count, 1), "train_error_running": 100.0 * (1 - correct / max(count, 1))}
    n = max(running["extra_n"], 1)
    out.update({k: v / n for k, v in sorted(running["extra"].items())})
    return out


def _evaluations(learner, train_loader, test_loader, opts: RunOptions, bundle, device, stop=None) -> dict:
    net = learner.eval_module()
    row = {}
    test = evaluate(net, test_loader, device, opts.amp, bundle.num_classes, stop)
    row.update(test_loss=test["loss"], test_error=test["error"], test_top5_error=test["top5_error"])
    if opts.eval_train:
        train = evaluate(net, train_loader, device, opts.amp, bundle.num_classes, stop)
        row.update(train_loss=train["loss"], train_error=train["error"], train_top5_error=train["top5_error"])
    return row


def _print_epoch(label: str, row: dict, epochs: int, ctx) -> None:
    if not ctx.is_main:
        return
    train = row.get("train_error", row["train_error_running"])
    tag = "" if row["complete"] else " (stopped mid-epoch)"
    tqdm.write(f"{label:>16} epoch {row['epoch']:>3}/{epochs}: train err {train:6.2f}%  test err "
               f"{row['test_error']:6.2f}%  top-5 {row['test_top5_error']:6.2f}%  [{row['seconds']:.1f}s]{tag}")

