"""Checks a run config against this machine, its dataset spec and its model before training.

A config can validate field by field and still fail minutes later: a U-Net too deep for the
crop, a GPU that is not there, an optimiser argument PyTorch refuses, a loss that does not fit
the model's outputs. :func:`preflight` tries each of these cheaply, before the run folder is
made: the model is built on the meta device (shapes only; see :mod:`pixelwise.models.probe`),
the loss runs once on a few zeros, and of the data only the listing and image headers are
read. Every failure is one line naming the dotted config key (or the data file).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from ..devices import device_problem
from ..io.config import RunConfig
from ..errors import ConfigError, DataError, PixelwiseError
from ..models import geometry
from ..models.probe import meta_forward, min_input_size


def preflight(cfg: RunConfig) -> None:
    """Refuse a run config that would fail after its run folder is made.

    Checks, in order: ``train.device`` (and ``train.amp_dtype``, ``train.sync_batchnorm``)
    against this machine; ``output.dir``; ``data.spec`` and its splits; ``augment``;
    ``model.kwargs`` (the model is built on the meta device); ``data.crop_size`` against the
    model's smallest input and, with BatchNorm, ``data.batch_size``; the splits' files (enough
    training images for a step, whole images the model takes; listing and headers only);
    ``loss`` against the model's outputs; ``optim`` arguments PyTorch would refuse.

    Raises:
        ConfigError: the first problem found, naming the dotted key.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _check_device(cfg, local_rank)
    _check_output_dir(Path(cfg.output.dir))
    spec = _check_data(cfg)
    model, kwargs = _check_model(cfg, spec)
    outputs = _check_geometry(cfg, model, kwargs.get("in_channels", spec.channels))
    _check_splits(cfg, spec, model, kwargs.get("in_channels", spec.channels))
    _check_loss(cfg, outputs, spec.ignore_index)
    _check_optim(cfg)


def _check_device(cfg: RunConfig, local_rank: int) -> None:
    t = cfg.train
    problem = device_problem(t.device, local_rank)
    if problem is not None:
        raise ConfigError(f"train.device: {problem}")
    cuda = t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
    if cuda and t.amp and t.amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp_dtype: this GPU has no bfloat16 support; use float16")
    if t.sync_batchnorm and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cuda:
        raise ConfigError("train.sync_batchnorm: PyTorch's SyncBatchNorm runs on GPUs only; "
                          "set it to false for a CPU run")


def _check_output_dir(folder: Path) -> None:
    # The nearest existing folder up the path decides whether the run folder can be made.
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output.dir: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir: cannot write in {existing} (permission denied)")


def _check_data(cfg: RunConfig):
    from ..data import load_spec
    from .setup import build_augment

    try:
        spec = load_spec(cfg.data.spec)
    except PixelwiseError as e:
        raise ConfigError(f"data.spec: {e}") from None
    for key in ("train_split", "val_split"):
        split = getattr(cfg.data, key)
        if split is not None and split not in spec.split_names:
            raise ConfigError(f"data.{key}: no split {split!r} in dataset {spec.name!r} "
                              f"(have {', '.join(spec.split_names)})")
    if cfg.data.crop_size is not None and min(cfg.train_crop) < 1:
        raise ConfigError(f"data.crop_size: must be positive, got {cfg.data.crop_size!r}")
    build_augment(cfg, spec.ignore_index)  # unknown or contradictory augment keys
    return spec


def _check_model(cfg: RunConfig, spec) -> tuple[nn.Module, dict[str, Any]]:
    from .setup import model_from_config, resolve_model_kwargs

    dataset = SimpleNamespace(num_classes=spec.num_classes, in_channels=spec.channels)
    kwargs = resolve_model_kwargs(cfg, dataset)
    pretrained = kwargs.get("pretrained")
    if isinstance(pretrained, str) and not pretrained.startswith(("http://", "https://")) \
            and not Path(pretrained).expanduser().is_file():
        raise ConfigError(f"model.kwargs.pretrained: {pretrained}: weights file not found")
    return model_from_config(cfg, kwargs, meta=True), kwargs


def _check_geometry(cfg: RunConfig, model: nn.Module, in_channels: int) -> int:
    """Check the crop against the model and return the number of output channels."""
    key = "data.crop_size" if cfg.data.crop_size is not None else "augment.crop"
    minimum = min_input_size(model, in_channels)
    if cfg.train_crop is None:  # full images: their sizes are known only once the data is read
        return meta_forward(model, in_channels, max(minimum, 64), max(minimum, 64))[1]
    height, width = cfg.train_crop
    if min(height, width) < minimum and not geometry.shrinks(model):
        raise ConfigError(f"{key}: {height}x{width} crops are too small for {cfg.model.name} "
                          f"with these model.kwargs: each side needs at least {minimum} pixels "
                          f"(raise the crop or lower model.kwargs.depth)")
    height, width = max(height, minimum), max(width, minimum)  # valid U-Nets mirror-pad
    try:
        return meta_forward(model, in_channels, height, width, batch=cfg.data.batch_size,
                            train=True)[1]
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} x {height}x{width} crops "
                          f"fail in {cfg.model.name}'s training pass: {_first_line(e)}") from None


def _check_splits(cfg: RunConfig, spec, model: nn.Module, in_channels: int) -> None:
    """The splits' files, from the listing and image headers only: enough training images for
    one optimiser step, and whole images (validation, training without a crop) that the
    model takes."""
    from ..data.check import nothing_found, small_images
    from .sampling import check_batches

    empty = nothing_found(spec)  # a wrong root: name every glob and list tried
    if empty is not None:
        raise DataError(empty)
    train = spec.resolve(cfg.data.train_split)  # DataError: no images, empty list file
    check_batches(cfg, len(train), int(os.environ.get("WORLD_SIZE", "1")))
    whole = {"data.val_split": cfg.data.val_split}
    if cfg.train_crop is None:
        whole["data.train_split"] = cfg.data.train_split
    if geometry.shrinks(model):
        return  # valid-convolution models mirror any image out to their input size
    minimum = min_input_size(model, in_channels)
    for key, split in whole.items():
        if split is None or minimum <= 1:
            continue
        problems = small_images(spec, spec.resolve(split), minimum)
        if problems:
            raise ConfigError(f"{key}: {len(problems)} image(s) of split {split!r} are too small "
                              f"for {cfg.model.name} with these model.kwargs, e.g. "
                              f"{problems[0]}")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_loss(cfg: RunConfig, outputs: int, ignore_index: int) -> None:
    from .setup import build_criterion

    logits = torch.zeros(2, outputs, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    criterion = build_criterion(cfg, ignore_index, torch.device("cpu"))  # the run's own loss
    try:
        criterion(logits, target)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ConfigError(f"loss: {cfg.loss.name!r} does not fit a model with {outputs} output "
                          f"channel(s): {_first_line(e)}") from None


def _check_optim(cfg: RunConfig) -> None:
    o = cfg.optim
    if o.name == "adamw":
        for i, beta in enumerate(o.betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"optim.betas: each must be in [0, 1), got {beta} at index {i}")
    if o.name == "sgd" and o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov: Nesterov momentum needs optim.momentum > 0")
