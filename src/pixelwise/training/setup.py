"""The parts of a run built from its config before training: data paths, datasets and the
training transform, the model and its loss. Bad values raise :class:`ConfigError` naming the
key, before any training. :mod:`pixelwise.training.preflight` checks a config with these same
builders (the model on the meta device, the loss on zeros) before any data is read."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io.config import RunConfig, size_pair
from ..errors import ConfigError
from ..models.registry import model_parameters


def resolve_data_paths(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` whose data spec path / root is absolute, so that the config saved in
    the run folder and checkpoints works from any directory."""
    spec = cfg.data.spec
    if isinstance(spec, str) and Path(spec).is_file():
        spec = str(Path(spec).resolve())
    elif isinstance(spec, dict) and spec.get("root") is not None:
        spec = {**spec, "root": str(Path(spec["root"]).expanduser().resolve())}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"spec": spec})})


def build_augment(cfg: RunConfig, ignore_index: int):
    """The training transform: ``augment`` with ``data.crop_size`` as its ``crop``."""
    from ..data import build_transforms

    aug = dict(cfg.augment or {})
    crop = cfg.data.crop_size
    if crop is not None:
        given = aug.get("crop")
        if given is not None and size_pair(given) != size_pair(crop):
            raise ConfigError(f"augment.crop: {given!r} contradicts data.crop_size "
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
    train_ds = SegmentationDataset(spec, cfg.data.train_split, cache_mb=cfg.data.cache_mb)
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
    params = model_parameters(cfg.model.name)
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


def model_from_config(cfg: RunConfig, kwargs: dict[str, Any], meta: bool = False) -> nn.Module:
    """``model.name`` built with ``kwargs``; ``meta``: on the meta device, shapes only, no
    weights fetched (the preflight's check). A builder's refusal is a ConfigError naming
    ``model.kwargs``."""
    from ..models import build_model
    from ..models.probe import meta_model

    try:
        return meta_model(cfg.model.name, kwargs) if meta else build_model(cfg.model.name,
                                                                            **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model.kwargs: cannot build {cfg.model.name!r}: {e}") from None


def build_run_model(cfg: RunConfig, kwargs: dict[str, Any], device: torch.device) -> nn.Module:
    """The registered model on ``device``, made fast for training with ``train.fast``
    (:func:`pixelwise.fast.optimize.optimize_for_training`)."""
    from ..fast.optimize import optimize_for_training

    model = model_from_config(cfg, kwargs).to(device)
    if cfg.train.fast:
        optimize_for_training(model)
    return model


def use_encoder_normalization(model: nn.Module, *datasets) -> None:
    """A pretrained encoder's input normalisation replaces the data set's mean / std in
    ``datasets`` (None entries skipped): the weights were trained on inputs normalised that
    way (ImageNet statistics, or 0.5 / 0.5 for the TF ports), and the checkpoint records
    what training used, so prediction, serving and export apply the same."""
    from ..models.weights import pretrained_normalization

    for ds in datasets:
        norm = pretrained_normalization(model, ds.in_channels) if ds is not None else None
        if norm is not None:
            ds.mean, ds.std = list(norm[0]), list(norm[1])


def build_criterion(cfg: RunConfig, ignore_index: int, device: torch.device) -> nn.Module:
    """``loss`` with the dataset's ``ignore_index``, averaged over the heads of a deeply
    supervised model (a list of logits in training); the loss itself for one tensor."""
    from ..losses import DeepSupervisionLoss, build_loss

    loss_kwargs = {"ignore_index": ignore_index, **cfg.loss.kwargs}
    try:
        return DeepSupervisionLoss(build_loss(cfg.loss.name, **loss_kwargs)).to(device)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss: {e}") from e
