"""The state a training run's loop shares (:class:`RunState`), where the run stands
(:class:`Progress`, saved in every checkpoint), and building both from the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..config import RunConfig, config_to_dict
from . import distributed as ddp
from .budget import TimeBudget
from .sampling import EpochBatchSampler, build_loaders
from .schedule import build_budget, build_optimizer, build_scheduler
from .setup import (build_criterion, build_datasets, build_run_model, resolve_model_kwargs,
                    use_encoder_normalization)


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
class RunState:
    """The state of one training run: what ``train_one_epoch``, ``validate`` and the checkpoint
    writer share (model, optimiser, data, settings) and where the run stands (``progress``)."""

    cfg: RunConfig
    dist: ddp.DistInfo
    model: nn.Module              # possibly wrapped in DistributedDataParallel
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool                     # mixed precision (train.amp, on CUDA only), decided once
    train_loader: DataLoader
    val_loader: DataLoader | None
    num_classes: int
    ignore_index: int
    # make_checkpoint's arguments but the weights and training state: model name and kwargs,
    # class names, normalisation, palette, ignore index, config
    checkpoint_meta: dict[str, Any]
    progress: Progress = field(default_factory=Progress)
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

    def autocast(self):
        dtype = torch.float16 if self.cfg.train.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.amp)

    def to_device(self, images: torch.Tensor, masks: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)


def build_run_state(cfg: RunConfig, info: ddp.DistInfo) -> RunState:
    """Datasets, model, loss, loaders, optimiser, schedule and budget of a run, at step 0."""
    train_ds, val_ds, transform = build_datasets(cfg)
    model_kwargs = resolve_model_kwargs(cfg, train_ds)
    model = build_run_model(cfg, model_kwargs, info.device)
    use_encoder_normalization(model, train_ds, val_ds)
    criterion = build_criterion(cfg, train_ds.ignore_index, info.device)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, transform, info)
    steps_per_epoch = len(train_loader.batch_sampler) // cfg.optim.grad_accum
    optimizer = build_optimizer(model, cfg)
    budget = build_budget(cfg, train_ds, val_loader, steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, budget)
    amp = cfg.train.amp and info.device.type == "cuda"
    meta = {
        # The weights are in the checkpoint: rebuilding it must not fetch the pretrained ones.
        "model_name": cfg.model.name,
        "model_kwargs": {k: v for k, v in model_kwargs.items() if k != "pretrained"},
        "class_names": train_ds.class_names, "mean": tuple(train_ds.mean),
        "std": tuple(train_ds.std), "palette": train_ds.palette,
        "ignore_index": train_ds.ignore_index, "config": config_to_dict(cfg),
    }
    return RunState(cfg=cfg, dist=info, model=model, criterion=criterion, optimizer=optimizer,
                    scheduler=scheduler, amp=amp,
                    scaler=torch.amp.GradScaler(info.device.type, enabled=amp),
                    train_loader=train_loader, val_loader=val_loader,
                    num_classes=train_ds.num_classes, ignore_index=train_ds.ignore_index,
                    checkpoint_meta=meta, budget=budget)
