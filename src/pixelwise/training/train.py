"""The training loop: ``train(cfg)`` turns a :class:`~pixelwise.io.config.RunConfig` into a run folder.

The structure follows torchvision's segmentation references: ``train_one_epoch`` and
``validate`` are plain functions; :class:`RunState` only bundles what they share. The rest of
a run lives beside this module, one concern each:

- :mod:`.state`: :class:`RunState` and :class:`Progress`, built from the config;
- :mod:`.setup`: datasets, model and loss from the config;
- :mod:`.sampling`: seeded augmentation, the order of an epoch's samples, the loaders;
- :mod:`.schedule`: optimiser, learning-rate schedule, the run's length (epochs or budget);
- :mod:`.resume`: what ``last.pt`` holds, writing it, loading it back (``resume=True``);
- :mod:`.runlog`: the run folder's CSV, TensorBoard, curves and log lines.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io.checkpoint import read_checkpoint
from ..io.config import RunConfig, dump_config
from ..errors import PixelwiseError
from ..io.files import atomic_write_bytes
from ..metrics import SUMMARY_METRICS
from . import distributed as ddp
from . import runlog
from ..inference.forward import labels_from_logits, whole_image_logits
from .resume import best_checkpoint, kept_message, last_checkpoint, restore, save_checkpoints
from .sampling import seed_everything
from .schedule import max_epochs, set_schedule_end
from .setup import resolve_data_paths
from .state import RunState, build_run_state

log = logging.getLogger("pixelwise.train")


# ---------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation

def _optimizer_step(t: RunState) -> None:
    clip = t.cfg.optim.clip_grad_norm
    if clip is not None:
        t.scaler.unscale_(t.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    t.progress.step += 1
    if t.budget is not None:
        # Re-estimate the schedule's length before the scheduler reads it; every process
        # takes rank 0's estimate so that all of them use one learning rate.
        t.budget.mark_step()
        total = t.budget.update_total(t.progress.step)
        t.budget.set_total(ddp.broadcast_int(total, t.dist))
    t.scheduler.step()


def _budget_spent(t: RunState) -> bool:
    return t.budget is not None and ddp.broadcast_flag(t.budget.exhausted(), t.dist)


def _check_finite(value: float, t: RunState, batch: int) -> None:
    bad = not math.isfinite(value)
    if t.dist.distributed:
        # Every process must stop together, or the others hang in the next all-reduce.
        bad = ddp.all_reduce_sum([float(bad)], t.dist)[0] > 0
    if bad:
        what = (f"loss is {value}" if not math.isfinite(value)
                else "another process's loss is not finite")
        raise PixelwiseError(
            f"{what} at step {t.progress.step + 1} (epoch {t.progress.epoch + 1}, "
            f"batch {batch + 1}); training stopped and {kept_message(t.cfg.run_dir)}. Lower "
            f"optim.lr, set optim.clip_grad_norm, or check the data")


def train_one_epoch(t: RunState, epoch: int, bar: Any = None) -> dict[str, float]:
    """Train on one epoch's batches (from ``t.progress.batch`` on); returns loss and speed.

    Raises:
        PixelwiseError: the loss became NaN or infinite (the step is named).
    """
    p, accum = t.progress, t.cfg.optim.grad_accum
    every = t.cfg.train.checkpoint_every_steps
    t.model.train()
    t.optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter() - p.time_s
    for b, (images, masks) in enumerate(t.train_loader, start=p.batch):
        if b % accum == 0 and _budget_spent(t):  # stop between optimiser steps only
            p.budget_spent = True
            break
        images, masks = t.to_device(images, masks)
        last_micro = (b + 1) % accum == 0
        # Skip the gradient all-reduce on accumulation micro-steps (DDP no_sync).
        sync = (t.model.no_sync() if t.dist.distributed and not last_micro
                else contextlib.nullcontext())
        with sync:
            with t.autocast():
                logits = whole_image_logits(t.model, images)
                loss = t.criterion(logits, masks)  # cast to float32 by the criterion
            value = loss.item()
            _check_finite(value, t, b)
            t.scaler.scale(loss / accum).backward()
        if last_micro:
            _optimizer_step(t)
        p.loss_sum += value * images.shape[0]
        p.loss_count += images.shape[0]
        p.images += images.shape[0] * t.dist.world_size
        p.batch = b + 1
        p.time_s = time.perf_counter() - start
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{p.images / max(p.time_s, 1e-9):.1f}")
        # Mid-epoch checkpoints only between optimiser steps (no half-accumulated gradients);
        # the epoch's last batch is followed by the end-of-epoch checkpoint anyway.
        if last_micro and every and p.step % every == 0 and p.batch < t.sampler.num_batches:
            save_checkpoints(t)
    loss_sum, count = ddp.all_reduce_sum([p.loss_sum, p.loss_count], t.dist)
    return {"train_loss": loss_sum / max(count, 1), "time_s": p.time_s,
            "images_per_s": p.images / max(p.time_s, 1e-9)}


@torch.no_grad()
def validate(t: RunState) -> dict[str, Any]:
    """Validation loss and confusion-matrix metrics over this process's share, all-reduced."""
    from ..metrics import ConfusionMatrix

    # The bare module: DDP's forward would broadcast buffers, a collective that hangs when
    # processes hold different numbers of validation images.
    net = getattr(t.model, "module", t.model)
    # Without SyncBatchNorm each process's running statistics drifted with its own last
    # batch: score rank 0's model (the one checkpointed) on every process.
    ddp.broadcast_buffers(net, t.dist)
    net.eval()
    cm = ConfusionMatrix(t.num_classes, ignore_index=t.ignore_index, device=t.device)
    loss_sum = count = 0.0
    for images, masks in t.val_loader:
        images, masks = t.to_device(images, masks)
        with t.autocast():
            logits = whole_image_logits(net, images).float()
        loss = t.criterion(logits, masks)
        if torch.isfinite(loss):
            loss_sum += loss.item() * images.shape[0]
            count += images.shape[0]
        cm.update(labels_from_logits(logits, t.cfg.train.val_threshold), masks)
    cm.all_reduce()
    loss_sum, count = ddp.all_reduce_sum([loss_sum, count], t.dist)
    metrics = cm.compute()
    out = {"val_loss": loss_sum / count if count else None}
    out.update({k: metrics.get(k) for k in SUMMARY_METRICS})
    out["per_class_iou"] = metrics.get("per_class_iou")
    return out


# ---------------------------------------------------------------------------------------------
# Entry point

def train(cfg: RunConfig, resume: bool = False, choose_postprocess: bool = True) -> Path:
    """Train a model as ``cfg`` says and return the run folder.

    Args:
        cfg: the validated run config.
        resume: continue from ``<run folder>/checkpoints/last.pt`` if it exists (a fresh start
            otherwise).
        choose_postprocess: at the end, choose post-processing on the validation split with
            best.pt and store it there (:func:`_choose_postprocessing`). A K-fold run's folds
            pass False: theirs is chosen on all out-of-fold predictions (crossval.json).

    Returns:
        The run folder (``cfg.output.dir / cfg.output.name``).

    Raises:
        ConfigError, DataError: bad config or data (before any training).
        PixelwiseError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    from .preflight import preflight

    preflight(cfg)  # values that validate but would fail later: before any folder is made
    if cfg.train.fast:
        from ..fast.allocator import tune_malloc

        tune_malloc()
    info = ddp.init_distributed(cfg.train.device)
    lock = None
    try:
        if info.is_main:  # held until the run ends: no second run writes into its folder
            lock = runlog.lock_run_dir(cfg.run_dir)
        return _train(cfg, resume, info, choose_postprocess)
    finally:
        if lock is not None:
            lock.close()
        ddp.cleanup(info)


def _train(cfg: RunConfig, resume: bool, info: ddp.DistInfo, choose_postprocess: bool) -> Path:
    cfg = resolve_data_paths(cfg)
    run_dir = cfg.run_dir
    if info.is_main:
        runlog.prepare_run_dir(cfg, resume)
    ddp.barrier(info)
    seed_everything(cfg.train.seed, cfg.train.deterministic, info.device)
    t = build_run_state(cfg, info)
    last = last_checkpoint(run_dir)
    if resume and last.is_file():
        restore(t, read_checkpoint(last), last)
        log.info("resuming %s at epoch %d, step %d", last, t.progress.epoch + 1, t.progress.step)
    if info.distributed:
        if cfg.train.sync_batchnorm:
            t.model = nn.SyncBatchNorm.convert_sync_batchnorm(t.model)
        t.model = nn.parallel.DistributedDataParallel(
            t.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if info.is_main:
        dump_config(cfg, run_dir / "config.yaml")
        runlog.write_metrics_csv(run_dir / "metrics.csv", t.progress.history)
    if t.budget is not None:
        # A resumed run keeps its clock, and its schedule until the step time is re-measured.
        t.budget.start(t.progress.elapsed_s)
        if t.progress.budget_steps is not None:
            t.budget.set_total(t.progress.budget_steps)
    _fit(t, run_dir)
    if info.is_main and choose_postprocess and t.val_loader is not None:
        _choose_postprocessing(t, run_dir)
    ddp.barrier(info)
    return run_dir


def _fit(t: RunState, run_dir: Path) -> None:
    """Epochs until ``train.epochs``, the time budget or early stopping ends the run."""
    cfg, info = t.cfg, t.dist
    writer = runlog.open_tensorboard(cfg, run_dir) if info.is_main else None
    epochs = max_epochs(cfg)
    saved = time.monotonic()
    try:
        while (epochs is None or t.progress.epoch < epochs) and not t.progress.budget_spent:
            entry, stop = _epoch(t, epochs)
            best = t.progress.best_epoch == entry["epoch"]
            last = stop or t.progress.budget_spent or t.progress.epoch == epochs
            # Rank 0's clock decides, so every rank checks the weights on the same epochs.
            due = best or last or ddp.broadcast_flag(
                _checkpoint_due(cfg.train.checkpoint_every_minutes, saved), info)
            if due:
                save_checkpoints(t, best=best)
                saved = time.monotonic()
            if info.is_main:
                runlog.log_epoch(entry, writer)
                runlog.write_metrics_csv(run_dir / "metrics.csv", t.progress.history)
            if ddp.broadcast_flag(stop, info):
                log.info("early stopping after epoch %d: %s has not improved for %d validations",
                         entry["epoch"], cfg.train.best_metric, t.progress.bad_validations)
                break
        if info.is_main:
            _finish(t, run_dir)
    finally:
        if writer is not None:
            writer.close()


def _checkpoint_due(every_minutes: float | None, saved: float) -> bool:
    return every_minutes is None or time.monotonic() - saved >= every_minutes * 60


def _epoch(t: RunState, epochs: int | None) -> tuple[dict[str, Any], bool]:
    """Train one epoch, validate when due; returns its history entry and whether early
    stopping ends the run."""
    cfg, p = t.cfg, t.progress
    epoch = p.epoch
    t.sampler.set_epoch(epoch, skip=p.batch)
    bar = None
    if cfg.train.progress and t.dist.is_main:
        bar = runlog.progress_bar(epoch, epochs, t.sampler.num_batches, t.sampler.skip)
    try:
        entry = {"epoch": epoch + 1, **train_one_epoch(t, epoch, bar)}
    finally:
        if bar is not None:
            bar.close()
    # An epoch that ends when one more step would not fit ends the run now.
    p.budget_spent = p.budget_spent or _budget_spent(t)
    if p.budget_spent:
        set_schedule_end(t.optimizer, t.scheduler, t.budget, p.step)
        log.info("stopping at step %d: train.max_minutes=%g reached", p.step,
                 cfg.train.max_minutes)
    entry.update(step=p.step, lr=t.optimizer.param_groups[0]["lr"])
    stop = False
    if t.val_loader is not None and ((epoch + 1) % cfg.train.val_every == 0
                                     or epoch + 1 == epochs or p.budget_spent):
        entry.update(_timed_validation(t))
        stop = _track_best(t, entry)
    p.history.append(entry)
    p.epoch, p.batch = epoch + 1, 0
    p.loss_sum, p.loss_count, p.images, p.time_s = 0.0, 0, 0, 0.0
    return entry, stop


def _timed_validation(t: RunState) -> dict[str, Any]:
    """:func:`validate`, its time told to the budget (it counts against it)."""
    if t.budget is None:
        return validate(t)
    t.budget.pause()
    start = time.monotonic()
    out = validate(t)
    t.budget.record_validation(time.monotonic() - start)
    return out


def _improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _track_best(t: RunState, entry: dict[str, Any]) -> bool:
    """Update the best value; returns True when early stopping should end the run."""
    p, tc = t.progress, t.cfg.train
    if _improved(entry.get(tc.best_metric), p.best_value, tc.best_mode):
        p.best_value, p.best_epoch, p.bad_validations = entry[tc.best_metric], entry["epoch"], 0
    else:
        p.bad_validations += 1
    patience = tc.early_stopping_patience
    return patience is not None and p.bad_validations >= patience


def _finish(t: RunState, run_dir: Path) -> None:
    best = best_checkpoint(run_dir)
    if not best.exists():  # no validation split: the final weights are the best we know
        atomic_write_bytes(best, last_checkpoint(run_dir).read_bytes())
    runlog.write_curves(t.progress.history, run_dir)


def _choose_postprocessing(t: RunState, run_dir: Path) -> None:
    """Choose post-processing on the validation split with best.pt and store it there.

    It costs one more pass over the validation images (as one validation), after training
    and outside ``train.max_minutes``: a budget plans training, and a run that stores no
    choice would leave predict/evaluate/serve without one. Resuming a finished run chooses
    again, with the same result.
    """
    from ..io.checkpoint import set_postprocess
    from ..inference.postprocess import describe_postprocessing
    from .postchoice import choose_on_split

    best = best_checkpoint(run_dir)
    start = time.monotonic()
    spec = choose_on_split(best, t.cfg, t.device)
    set_postprocess(best, spec)
    log.info("post-processing chosen on %s (%.1f s), stored in %s:", t.cfg.data.val_split,
             time.monotonic() - start, best)
    for line in describe_postprocessing(spec):
        log.info("  %s", line)
