"""The training loop: ``train(cfg)`` turns a :class:`~pixelwise.config.RunConfig` into a run folder.

Run folder (``output.dir/output.name``)::

    config.yaml           the resolved config
    checkpoints/last.pt   written every epoch (and every ``checkpoint_every_steps``)
    checkpoints/best.pt   the best epoch by ``train.best_metric``
    metrics.csv           one row per epoch
    curves.png            loss and metric curves, drawn at the end
    tensorboard/          when the tensorboard package is importable

Checkpoints are self-describing (:mod:`pixelwise.checkpoint`) and carry a ``training`` entry
with the optimiser, scheduler, scaler, epoch/step, RNG states and history, so ``resume=True``
continues where the last checkpoint left off. With ``train.deterministic`` a run killed at any
point and resumed ends with the same weights, bit for bit, as one never interrupted. That
works because nothing random depends on the process's history: the sample order of epoch
``e`` comes from a generator seeded with ``(seed, e)`` and the augmentation of sample ``i``
in epoch ``e`` from a seed derived from ``(seed, e, i)``.

The structure follows torchvision's segmentation references: ``train_one_epoch`` and
``validate`` are plain functions; :class:`Trainee` only bundles what they share.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..checkpoint import make_checkpoint, read_checkpoint, state_dict_mismatch
from ..config import RunConfig, config_to_dict, dump_config
from ..errors import CheckpointError, ConfigError, PixelwiseError
from ..io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from ..preprocess import to_tensor
from . import distributed as ddp
from .budget import TimeBudget
from .forward import labels_from_logits, whole_image_logits

log = logging.getLogger("pixelwise.train")

DEFAULT_EPOCHS = 10  # without a time budget, when train.epochs is unset
SUMMARY_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "dice")
CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss", *SUMMARY_METRICS,
              "time_s", "images_per_s")


# ---------------------------------------------------------------------------------------------
# Reproducible data order and augmentation

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: independent of workers and ranks."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU) RNGs inside the block; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededDataset(Dataset):
    """Item ``(epoch, i)``: sample ``i`` of a :class:`SegmentationDataset` augmented reproducibly.

    The augmentation gets a generator seeded from ``(seed, epoch, i)`` (passed as ``rng=`` to
    transforms that take one, as ``pixelwise.data`` transforms do), and the global RNGs are
    seeded the same way around the call for transforms that use them. So a sample looks the
    same whichever worker, process or resumed run draws it.

    Args:
        dataset: a dataset with ``read_raw(i)``, ``mean`` and ``std`` (its own transform unused).
        transform: ``(image, mask[, rng]) -> (image, mask)`` on numpy arrays, or None.
        seed: the run's seed.
    """

    def __init__(self, dataset, transform: Callable | None, seed: int):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._takes_rng = transform is not None and _accepts_rng(transform)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.dataset.read_raw(index)
        if self.transform is not None:
            s = sample_seed(self.seed, epoch, index)
            with seeded(s):
                if self._takes_rng:
                    image, mask = self.transform(image, mask, rng=np.random.default_rng(s))
                else:
                    image, mask = self.transform(image, mask)
        return (to_tensor(image, self.dataset.mean, self.dataset.std),
                torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))


def _accepts_rng(fn: Callable) -> bool:
    import inspect

    try:
        return "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` from a :class:`DistributedSampler` (also for one process).

    The order of an epoch depends only on ``(seed, epoch)``; ``skip`` drops the batches a
    resumed run has already trained on. Incomplete batches are dropped (BatchNorm needs > 1).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = iter(self.sampler)
        for b in range(self.num_batches):
            batch = list(islice(indices, self.batch_size))
            if b >= self.skip:
                yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return self.num_batches - self.skip


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int, grad_accum: int,
                      steps_per_epoch: int | None) -> int:
    """Batches one process draws per epoch: whole optimiser steps only."""
    per_rank = math.ceil(num_samples / world_size)
    steps = (per_rank // batch_size) // grad_accum
    if steps_per_epoch is not None:
        steps = min(steps, steps_per_epoch)
    return steps * grad_accum


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule

def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; biases (and norm parameters) may get their own lr / decay."""
    o = cfg.optim
    weights, biases = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if p.ndim <= 1 else weights).append(p)
    bias_wd = o.weight_decay if o.bias_weight_decay is None else o.bias_weight_decay
    groups = [{"params": weights, "lr": o.lr, "weight_decay": o.weight_decay},
              {"params": biases, "lr": o.lr * o.bias_lr_factor, "weight_decay": bias_wd}]
    groups = [g for g in groups if g["params"]]
    # The fused kernels update every tensor in one pass (AdamW: 37 ms instead of 103 ms per
    # step for 21 M parameters on one CPU thread); same update up to float rounding.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32
                for g in groups for p in g["params"])
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=fused)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, power: float = 0.9,
              min_lr_ratio: float = 0.0, warmup_factor: float = 0.001) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps.

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``, then over the remaining
    steps ``poly``: ``(1 - t)**power``; ``cosine``: ``r + (1 - r) * (1 + cos(pi t)) / 2`` with
    ``r = min_lr_ratio``; ``none``: 1. ``t`` runs from 0 to 1.
    """
    if step < warmup_steps:
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "poly":
        return (1 - t) ** power
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int,
                    budget: TimeBudget | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR implementing :func:`lr_factor`.

    The schedule's length is ``train.epochs`` epochs, or with a time budget the steps that
    fit in it (at most ``train.epochs`` epochs when both are given), re-estimated by the
    budget as training goes.
    """
    o = cfg.optim
    epochs = max_epochs(cfg)
    epoch_steps = epochs * steps_per_epoch if epochs else None
    warmup = o.warmup_steps or round(o.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        total = epoch_steps if budget is None else budget.total_steps(epoch_steps or step + 1)
        return lr_factor(step, total, warmup, o.schedule, o.power, o.min_lr_ratio, o.warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def max_epochs(cfg: RunConfig) -> int | None:
    """``train.epochs``; unset, 10 without a time budget and no limit with one."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs
    return None if cfg.train.max_minutes is not None else DEFAULT_EPOCHS


def set_schedule_end(t: "Trainee") -> None:
    """A budgeted run stops here: its schedule ends at this step, so the learning rate the
    optimiser holds (and the log shows) is the schedule's end value."""
    t.budget.set_total(t.progress.step)
    for group, base, fn in zip(t.optimizer.param_groups, t.scheduler.base_lrs,
                               t.scheduler.lr_lambdas):
        group["lr"] = base * fn(t.progress.step)


# ---------------------------------------------------------------------------------------------
# State shared by the loop

@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0            # epochs completed
    batch: int = 0            # batches of the current epoch already trained on
    step: int = 0             # optimiser steps so far
    best_value: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0  # validations since the best one (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)
    # running sums of the current epoch, so that a mid-epoch resume reports the same loss
    loss_sum: float = 0.0
    loss_count: int = 0
    images: int = 0
    time_s: float = 0.0
    elapsed_s: float = 0.0    # wall time of the whole run so far (the time budget's clock)
    budget_steps: int | None = None  # the budget's latest estimate of the schedule's length
    budget_spent: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Trainee:
    """What ``train_one_epoch`` and ``validate`` share: model, optimiser, data, settings."""

    cfg: RunConfig
    dist: ddp.DistInfo
    model: nn.Module              # possibly wrapped in DistributedDataParallel
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    val_loader: DataLoader | None
    num_classes: int
    ignore_index: int
    progress: Progress
    save: Callable[[], None]      # writes last.pt (rank 0 only)
    budget: TimeBudget | None = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def sampler(self) -> EpochBatchSampler:
        return self.train_loader.batch_sampler  # type: ignore[return-value]

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.num_batches // self.cfg.optim.grad_accum

    @property
    def amp(self) -> bool:
        return self.cfg.train.amp and self.device.type == "cuda"

    def autocast(self):
        dtype = torch.float16 if self.cfg.train.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.amp)

    def to_device(self, images: torch.Tensor, masks: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# One epoch of training, one pass of validation

def _optimizer_step(t: Trainee) -> None:
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
        epochs = max_epochs(t.cfg)
        total = t.budget.update_total(t.progress.step, epochs and epochs * t.steps_per_epoch)
        t.budget.set_total(ddp.broadcast_int(total, t.dist))
    t.scheduler.step()


def _budget_spent(t: Trainee) -> bool:
    return t.budget is not None and ddp.broadcast_flag(t.budget.exhausted(), t.dist)


def _kept_message(t: Trainee) -> str:
    last = t.cfg.run_dir / "checkpoints" / "last.pt"
    return (f"the last good checkpoint {last} is kept" if last.is_file()
            else "no checkpoint had been written yet")


def _check_finite(value: float, t: Trainee, batch: int) -> None:
    bad = not math.isfinite(value)
    if t.dist.distributed:
        # Every process must stop together, or the others hang in the next all-reduce.
        bad = ddp.all_reduce_sum([float(bad)], t.dist)[0] > 0
    if bad:
        what = (f"loss is {value}" if not math.isfinite(value)
                else "another process's loss is not finite")
        raise PixelwiseError(
            f"{what} at step {t.progress.step + 1} (epoch {t.progress.epoch + 1}, "
            f"batch {batch + 1}); training stopped and {_kept_message(t)}. Lower optim.lr, "
            f"set optim.clip_grad_norm, or check the data")


def check_weights_finite(t: Trainee) -> None:
    """Refuse to checkpoint NaN/inf weights (a step can break them before the loss shows it)."""
    for name, param in getattr(t.model, "module", t.model).state_dict().items():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise PixelwiseError(
                f"weight {name} is not finite after step {t.progress.step}; training stopped "
                f"and {_kept_message(t)}. Lower optim.lr or set optim.clip_grad_norm")


def train_one_epoch(t: Trainee, epoch: int, bar: Any = None) -> dict[str, float]:
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
            t.save()
    loss_sum, count = ddp.all_reduce_sum([p.loss_sum, p.loss_count], t.dist)
    return {"train_loss": loss_sum / max(count, 1), "time_s": p.time_s,
            "images_per_s": p.images / max(p.time_s, 1e-9)}


@torch.no_grad()
def validate(t: Trainee) -> dict[str, Any]:
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
# Checkpoints and RNG state (all plain types, so torch.load(weights_only=True) reads them)

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as weights_only-loadable values."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(t: Trainee) -> dict[str, Any]:
    if t.budget is not None:
        t.progress.elapsed_s = t.budget.elapsed()
        t.progress.budget_steps = t.budget.total_steps(t.progress.step)
    return {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "progress": t.progress.state_dict(),
        "best_metric": t.cfg.train.best_metric,
        "world_size": t.dist.world_size,
        "rng": rng_state(),
    }


def restore(t: Trainee, ckpt: dict[str, Any], path: Path) -> None:
    """Load model, optimiser, scheduler, scaler, progress and RNG from a raw checkpoint."""
    training = ckpt.get("training")
    if not training:
        raise CheckpointError(f"{path}: has no training state to resume from")
    net = getattr(t.model, "module", t.model)
    mismatch = state_dict_mismatch(net, ckpt["state_dict"])
    if mismatch:
        raise CheckpointError(f"{path}: weights do not fit this config's model: {mismatch}")
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
        t.optimizer.load_state_dict(training["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not match this config's model/optimiser: {e}") from e
    t.scheduler.load_state_dict(training["scheduler"])
    if training["scaler"]:
        t.scaler.load_state_dict(training["scaler"])
    progress = Progress(**training["progress"])
    if progress.batch and training.get("world_size", 1) != t.dist.world_size:
        raise CheckpointError(f"{path}: saved mid-epoch by {training.get('world_size')} "
                              f"process(es); resume it with the same number, not "
                              f"{t.dist.world_size}")
    t.progress = progress
    set_rng_state(training["rng"])


# ---------------------------------------------------------------------------------------------
# Run folder

def _csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    row = {k: entry.get(k) for k in CSV_FIELDS}
    return {k: ("" if v is None else v) for k, v in row.items()}


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV from the history: a resumed run has exactly its checkpoint's rows."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for entry in history:
        writer.writerow(_csv_row(entry))
    atomic_write_text(path, buf.getvalue())


def _prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        if not cfg.output.overwrite:
            raise PixelwiseError(f"{run_dir}: run folder already has checkpoints; pass --resume to "
                                 f"continue it, or set output.name=... or output.overwrite=true")
        shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # A run killed during a write leaves its temporary behind; nothing else writes here.
    for folder in (run_dir, run_dir / "checkpoints"):
        for stale in remove_stale_temporaries(folder):
            log.info("removed %s, left by a write that was killed", stale)
    return run_dir


def _tensorboard(cfg: RunConfig, run_dir: Path):
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV and curves.png still have it all
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ---------------------------------------------------------------------------------------------
# Setup

def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed all RNGs; in deterministic mode on CUDA also ask for deterministic kernels.

    CPU kernels are already deterministic for a fixed thread count, and
    ``torch.use_deterministic_algorithms`` costs seconds of imports, so CPU runs skip it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        import os

        # cuBLAS needs this for deterministic matmuls (read when CUDA initialises).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def build_augment(cfg: RunConfig, ignore_index: int):
    """The training transform: ``augment`` with ``data.crop_size`` as its ``crop``."""
    from ..data import build_transforms

    aug = dict(cfg.augment or {})
    crop = cfg.data.crop_size
    if crop is not None:
        if aug.get("crop") is not None and aug["crop"] != crop and list(aug["crop"]) != list(crop):
            raise ConfigError(f"augment.crop: {aug['crop']!r} contradicts data.crop_size "
                              f"{crop!r}; give one of them")
        aug["crop"] = list(crop) if isinstance(crop, tuple) else crop
    return build_transforms(aug or None, train=True, ignore_index=ignore_index)


def build_datasets(cfg: RunConfig):
    """Load the spec, check the splits (cheaply) and build the train / validation datasets.

    Returns:
        ``(train, val, train_transform)``: datasets without transforms (the trainer applies
        ``train_transform`` itself, seeded per sample) and ``val`` None without a val split.
    """
    from ..data import SegmentationDataset, load_spec, quick_check

    spec = load_spec(cfg.data.spec)
    splits = [cfg.data.train_split] + ([cfg.data.val_split] if cfg.data.val_split else [])
    for split in splits:
        quick_check(spec, split)
    train_ds = SegmentationDataset(spec, cfg.data.train_split)
    val_ds = SegmentationDataset(spec, cfg.data.val_split) if cfg.data.val_split else None
    if val_ds is not None and cfg.data.val_batch_size > 1:
        _check_val_batches(val_ds, cfg.data.val_batch_size)
    return train_ds, val_ds, build_augment(cfg, spec.ignore_index)


def _check_val_batches(val_ds, batch_size: int) -> None:
    """Whole validation images are batched as they are: a batch needs one size (headers only)."""
    from ..data import image_size

    sizes = sorted({image_size(path) for path, _ in val_ds.samples})
    if len(sizes) > 1:
        raise ConfigError(f"data.val_batch_size: {batch_size} needs validation images of one "
                          f"size, but they come in {len(sizes)} sizes (e.g. "
                          f"{sizes[0][0]}x{sizes[0][1]} and {sizes[-1][0]}x{sizes[-1][1]}); "
                          f"use 1")


def resolve_model_kwargs(cfg: RunConfig, dataset) -> dict[str, Any]:
    """Model kwargs with ``in_channels`` / ``num_classes`` filled in from the dataset."""
    import inspect

    from ..models.registry import _MODELS

    params = inspect.signature(_MODELS[cfg.model.name]).parameters
    kwargs = dict(cfg.model.kwargs)
    if "num_classes" in params:
        kwargs.setdefault("num_classes", dataset.num_classes)
        n = kwargs["num_classes"]
        if n != dataset.num_classes and not (n == 1 and dataset.num_classes == 2):
            raise ConfigError(f"model.kwargs.num_classes: {n} does not fit the dataset's "
                              f"{dataset.num_classes} classes (1 is allowed for two-class data)")
    if "in_channels" in params:
        kwargs.setdefault("in_channels", dataset.in_channels)
        if kwargs["in_channels"] != dataset.in_channels:
            raise ConfigError(f"model.kwargs.in_channels: {kwargs['in_channels']} but the dataset "
                              f"has {dataset.in_channels} channels")
    elif dataset.in_channels != 3:
        raise ConfigError(f"model.name: {cfg.model.name!r} takes 3-channel images; the dataset "
                          f"has {dataset.in_channels}")
    return kwargs


def resolve_data_paths(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` whose data spec path / root is absolute, so that the config saved in
    the run folder and checkpoints works from any directory."""
    spec = cfg.data.spec
    if isinstance(spec, str) and Path(spec).is_file():
        spec = str(Path(spec).resolve())
    elif isinstance(spec, dict) and spec.get("root") is not None:
        spec = {**spec, "root": str(Path(spec["root"]).expanduser().resolve())}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"spec": spec})})


def _loaders(cfg: RunConfig, train_ds, val_ds, transform, info: ddp.DistInfo):
    d, o = cfg.data, cfg.optim
    n_batches = batches_per_epoch(len(train_ds), d.batch_size, info.world_size, o.grad_accum,
                                  cfg.train.steps_per_epoch)
    if n_batches == 0:
        raise ConfigError(f"data.batch_size: {len(train_ds)} training images give no complete "
                          f"step of batch_size={d.batch_size} x grad_accum={o.grad_accum} "
                          f"x {info.world_size} process(es)")
    pin = info.device.type == "cuda"
    sampler = EpochBatchSampler(train_ds, d.batch_size, n_batches, cfg.train.seed,
                                info.rank, info.world_size)
    # Each loader gets its own generator: without one, every iter() draws its workers' base
    # seed from the global torch RNG, so a run resumed mid-epoch (which starts a new iterator
    # after restoring that RNG) would shift every later dropout mask. The samples themselves
    # are seeded per index by SeededDataset and do not need the workers' seeds.
    train_loader = DataLoader(SeededDataset(train_ds, transform, cfg.train.seed),
                              batch_sampler=sampler,
                              num_workers=d.workers, pin_memory=pin,
                              generator=torch.Generator().manual_seed(cfg.train.seed))
    val_loader = None
    if val_ds is not None and len(val_ds):
        # Every process validates a disjoint share (no padding, so nothing counts twice).
        share = Subset(val_ds, range(info.rank, len(val_ds), info.world_size))
        val_loader = DataLoader(share, batch_size=d.val_batch_size, shuffle=False,
                                num_workers=d.workers, pin_memory=pin,
                                generator=torch.Generator().manual_seed(cfg.train.seed))
    return train_loader, val_loader


def build_budget(cfg: RunConfig, train_ds, val_loader: DataLoader | None,
                 steps_per_epoch: int) -> TimeBudget | None:
    """The run's :class:`TimeBudget` from ``train.max_minutes`` (None without one).

    The pixels of a validation pass and of a training step let the budget guess the cost of
    the validations still to come before it has timed one.
    """
    from ..data import image_size

    tc = cfg.train
    if tc.max_minutes is None:
        return None
    crop = cfg.data.crop_size
    if crop is None:  # whole images: the first one's size, from its header
        train_hw = image_size(train_ds.samples[0][0])
    else:
        train_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
    train_pixels = math.prod(train_hw) * cfg.data.batch_size * cfg.optim.grad_accum
    val_pixels = 0
    if val_loader is not None:
        share = val_loader.dataset  # this process's Subset of the validation set
        first = share.dataset.samples[share.indices[0]][0]
        val_pixels = math.prod(image_size(first)) * len(share)
    return TimeBudget(60 * tc.max_minutes, val_pixels=val_pixels,
                      train_pixels_per_step=train_pixels,
                      steps_per_validation=(tc.val_every * steps_per_epoch
                                            if val_loader is not None else None))


def _improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


# ---------------------------------------------------------------------------------------------
# Entry point

def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Train a model as ``cfg`` says and return the run folder.

    Args:
        cfg: the validated run config.
        resume: continue from ``<run folder>/checkpoints/last.pt`` if it exists (a fresh start
            otherwise).

    Returns:
        The run folder (``cfg.output.dir / cfg.output.name``).

    Raises:
        ConfigError, DataError: bad config or data (before any training).
        PixelwiseError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    from .preflight import preflight

    preflight(cfg)  # values that validate but would fail later: before any folder is made
    if cfg.train.tune_allocator:
        from .allocator import tune_malloc

        tune_malloc()
    info = ddp.init_distributed(cfg.train.device)
    try:
        return _train(cfg, resume, info)
    finally:
        ddp.cleanup(info)


def _train(cfg: RunConfig, resume: bool, info: ddp.DistInfo) -> Path:
    from ..losses import DeepSupervisionLoss, build_loss
    from ..models import build_model

    cfg = resolve_data_paths(cfg)
    run_dir = cfg.run_dir
    if info.is_main:
        _prepare_run_dir(cfg, resume)
    ddp.barrier(info)
    seed_everything(cfg.train.seed, cfg.train.deterministic, info.device)
    train_ds, val_ds, transform = build_datasets(cfg)
    model_kwargs = resolve_model_kwargs(cfg, train_ds)
    try:
        model = build_model(cfg.model.name, **model_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.kwargs: cannot build {cfg.model.name!r}: {e}") from e
    model.to(info.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_kwargs = {"ignore_index": train_ds.ignore_index, **cfg.loss.kwargs}
    try:
        # The wrapper averages over the heads of a deeply supervised model (a list of
        # logits in training) and is the loss itself for one tensor.
        criterion = DeepSupervisionLoss(build_loss(cfg.loss.name, **loss_kwargs)).to(info.device)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss: {e}") from e

    train_loader, val_loader = _loaders(cfg, train_ds, val_ds, transform, info)
    steps_per_epoch = len(train_loader.batch_sampler) // cfg.optim.grad_accum
    optimizer = build_optimizer(model, cfg)
    budget = build_budget(cfg, train_ds, val_loader, steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, budget)
    use_amp = cfg.train.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler(info.device.type, enabled=use_amp)
    config_dict = config_to_dict(cfg)

    # The weights are in the checkpoint: rebuilding it must not fetch the pretrained ones again.
    saved_kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained"}

    def checkpoint_dict() -> dict[str, Any]:
        return make_checkpoint(model, cfg.model.name, saved_kwargs, train_ds.class_names,
                               tuple(train_ds.mean), tuple(train_ds.std),
                               palette=train_ds.palette, ignore_index=train_ds.ignore_index,
                               config=config_dict, training=training_state(t))

    def save_last() -> None:
        check_weights_finite(t)
        if info.is_main:
            atomic_torch_save(checkpoint_dict(), run_dir / "checkpoints" / "last.pt")

    t = Trainee(cfg=cfg, dist=info, model=model, criterion=criterion, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, train_loader=train_loader,
                val_loader=val_loader, num_classes=train_ds.num_classes,
                ignore_index=train_ds.ignore_index, progress=Progress(), save=save_last,
                budget=budget)
    last = run_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        restore(t, read_checkpoint(last), last)
        log.info("resuming %s at epoch %d, step %d", last, t.progress.epoch + 1, t.progress.step)
    if info.distributed:
        if cfg.train.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        t.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if info.is_main:
        dump_config(cfg, run_dir / "config.yaml")
        write_metrics_csv(run_dir / "metrics.csv", t.progress.history)
    if budget is not None:
        # A resumed run keeps its clock, and its schedule until the step time is re-measured.
        budget.start(t.progress.elapsed_s)
        if t.progress.budget_steps is not None:
            budget.set_total(t.progress.budget_steps)
    _fit(t, checkpoint_dict, run_dir)
    ddp.barrier(info)
    return run_dir


def _fit(t: Trainee, checkpoint_dict: Callable[[], dict], run_dir: Path) -> None:
    cfg, p, info = t.cfg, t.progress, t.dist
    writer = _tensorboard(cfg, run_dir) if info.is_main else None
    sampler = t.sampler
    epochs = max_epochs(cfg)
    try:
        while (epochs is None or p.epoch < epochs) and not p.budget_spent:
            epoch = p.epoch
            sampler.set_epoch(epoch, skip=p.batch)
            bar = _progress_bar(t, epoch, sampler)
            try:
                entry = {"epoch": epoch + 1, **train_one_epoch(t, epoch, bar)}
            finally:
                if bar is not None:
                    bar.close()
            # An epoch that ends when one more step would not fit ends the run now.
            p.budget_spent = p.budget_spent or _budget_spent(t)
            if p.budget_spent:
                set_schedule_end(t)
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
            check_weights_finite(t)
            if info.is_main:
                _log_epoch(entry, writer)
                ckpt = checkpoint_dict()
                # best.pt first: a run killed between the two writes resumes from the previous
                # last.pt and redoes this epoch, instead of recording a best epoch whose
                # weights never reached best.pt.
                if p.best_epoch == epoch + 1:
                    atomic_torch_save(ckpt, run_dir / "checkpoints" / "best.pt")
                atomic_torch_save(ckpt, run_dir / "checkpoints" / "last.pt")
                write_metrics_csv(run_dir / "metrics.csv", p.history)
            if ddp.broadcast_flag(stop, info):
                log.info("early stopping after epoch %d: %s has not improved for %d validations",
                         epoch + 1, cfg.train.best_metric, p.bad_validations)
                break
        if info.is_main:
            _finish(t, checkpoint_dict, run_dir)
    finally:
        if writer is not None:
            writer.close()


def _timed_validation(t: Trainee) -> dict[str, Any]:
    """:func:`validate`, its time told to the budget (it counts against it)."""
    if t.budget is None:
        return validate(t)
    t.budget.pause()
    start = time.monotonic()
    out = validate(t)
    t.budget.record_validation(time.monotonic() - start)
    return out


def _track_best(t: Trainee, entry: dict[str, Any]) -> bool:
    """Update the best value; returns True when early stopping should end the run."""
    p, tc = t.progress, t.cfg.train
    if _improved(entry.get(tc.best_metric), p.best_value, tc.best_mode):
        p.best_value, p.best_epoch, p.bad_validations = entry[tc.best_metric], entry["epoch"], 0
    else:
        p.bad_validations += 1
    patience = tc.early_stopping_patience
    return patience is not None and p.bad_validations >= patience


def _finish(t: Trainee, checkpoint_dict: Callable[[], dict], run_dir: Path) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    if not best.exists():  # no validation split: the final weights are the best we know
        atomic_torch_save(checkpoint_dict(), best)
    from ..report import plot_training_curves

    plot_training_curves(t.progress.history, run_dir / "curves.png")


def _progress_bar(t: Trainee, epoch: int, sampler: EpochBatchSampler):
    if not (t.cfg.train.progress and t.dist.is_main):
        return None
    from tqdm.auto import tqdm

    epochs = max_epochs(t.cfg)
    return tqdm(total=sampler.num_batches, initial=sampler.skip, leave=False, dynamic_ncols=True,
                desc=f"epoch {epoch + 1}/{epochs or '?'}", unit="batch")


def _log_epoch(entry: dict[str, Any], writer) -> None:
    parts = [f"{k}={entry[k]:.4f}" for k in ("train_loss", "val_loss", *SUMMARY_METRICS)
             if isinstance(entry.get(k), float)]
    log.info("epoch %d  step %d  %s  %.1f img/s", entry["epoch"], entry["step"], "  ".join(parts),
             entry.get("images_per_s", 0.0))
    if writer is not None:
        for k in ("train_loss", "val_loss", "lr", *SUMMARY_METRICS):
            if isinstance(entry.get(k), (int, float)):
                writer.add_scalar(k, entry[k], entry["step"])
