"""Optimiser and learning-rate schedule: how long the run is and how fast it learns.

The schedule is stepped once per optimiser step: a linear warm-up, then ``poly``, ``cosine`` or
``none`` over the remaining steps. Its length is ``train.epochs`` epochs, or with a time budget
(:class:`~pixelwise.engine.budget.TimeBudget`) the steps that fit in ``train.max_minutes``,
re-estimated as training goes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..config import RunConfig
from .budget import TimeBudget
from .optim import SGD, AdamW

DEFAULT_EPOCHS = 10  # without a time budget, when train.epochs is unset


def max_epochs(cfg: RunConfig) -> int | None:
    """``train.epochs``; unset, 10 without a time budget and no limit with one."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs
    return None if cfg.train.max_minutes is not None else DEFAULT_EPOCHS


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; biases (and norm parameters) and a pretrained encoder's
    parameters may get their own lr (and biases their own decay)."""
    o = cfg.optim
    bias_wd = o.weight_decay if o.bias_weight_decay is None else o.bias_weight_decay
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bias, encoder = p.ndim <= 1, ".encoder." in f".{name}"
        if (bias, encoder) not in groups:
            lr = (o.lr * (o.bias_lr_factor if bias else 1.0)
                  * (o.encoder_lr_factor if encoder else 1.0))
            groups[bias, encoder] = {"params": [], "lr": lr,
                                     "weight_decay": bias_wd if bias else o.weight_decay}
        groups[bias, encoder]["params"].append(p)
    groups = [groups[k] for k in sorted(groups)]
    # The fused kernels update every tensor in one pass (AdamW: 37 ms instead of 103 ms per
    # step for 21 M parameters on one CPU thread); same update up to float rounding. The
    # classes of .optim hand them channels_last tensors without a layout copy.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32
                for g in groups for p in g["params"])
    if o.name == "sgd":
        return SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, fused=fused)
    return AdamW(groups, lr=o.lr, betas=o.betas, fused=fused)


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


def set_schedule_end(optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR, budget: TimeBudget,
                     step: int) -> None:
    """A budgeted run stops at ``step``: its schedule ends there, so the learning rate the
    optimiser holds (and the log shows) is the schedule's end value."""
    budget.set_total(step)
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)


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
    # whole images: the first one's size, from its header
    train_hw = cfg.train_crop or image_size(train_ds.samples[0][0])
    train_pixels = math.prod(train_hw) * cfg.data.batch_size * cfg.optim.grad_accum
    val_pixels = 0
    if val_loader is not None:
        share = val_loader.dataset  # this process's Subset of the validation set
        first = share.dataset.samples[share.indices[0]][0]
        val_pixels = math.prod(image_size(first)) * len(share)
    epochs = max_epochs(cfg)
    return TimeBudget(60 * tc.max_minutes, val_pixels=val_pixels,
                      train_pixels_per_step=train_pixels,
                      max_steps=epochs * steps_per_epoch if epochs else None,
                      steps_per_validation=(tc.val_every * steps_per_epoch
                                            if val_loader is not None else None))
