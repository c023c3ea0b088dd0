"""The run config: one flat, validated description of a training run.

A run config is a YAML file with six sections::

    model:   {name: unet, kwargs: {base_channels: 32}}
    data:    {spec: path/to/spec.yaml, train_split: train, val_split: val, batch_size: 8}
    augment: {...}            # handed to pixelwise.data.build_transforms unchanged
    optim:   {name: sgd, lr: 0.01, momentum: 0.9, schedule: poly, warmup_steps: 100}
    loss:    {name: ce, kwargs: {}}
    train:   {epochs: 50, seed: 0, best_metric: mean_iou}
    output:  {dir: runs, name: my-run}

Every field can be overridden from the command line with ``section.key=value`` (the value is
parsed as YAML, so ``optim.lr=1e-3``, ``train.amp=false`` and ``model.kwargs.depth=3`` work).
Unknown keys and wrong types raise :class:`~pixelwise.errors.ConfigError` naming the dotted key.
There is no inheritance between configs: a recipe is complete in itself.
"""
from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ..errors import ConfigError
from ..inference.forward import DEFAULT_THRESHOLD
from .files import atomic_write_text, read_text

__all__ = ["RunConfig", "ModelConfig", "DataConfig", "OptimConfig", "LossConfig", "TrainConfig",
           "OutputConfig", "load_config", "parse_config", "apply_overrides", "dump_config"]


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which registered model to build and its constructor keyword arguments.

    ``in_channels`` and ``num_classes`` default to the dataset's when left out of ``kwargs``;
    ``num_classes: 1`` asks for a binary (sigmoid) model on a two-class dataset.
    """

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from ..models import list_models

        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; available: {', '.join(list_models())}")
        return v


class DataConfig(_Section):
    """The dataset and how batches are drawn from it.

    ``spec`` is a dataset spec: a path to a spec YAML file, or the spec itself as a mapping
    (see :func:`pixelwise.data.load_spec`). Relative paths are taken from the working directory.
    ``batch_size`` is per process: under ``torchrun`` the global batch is
    ``batch_size * world_size``.
    """

    spec: str | dict[str, Any]
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: int | tuple[int, int] | None = None
    batch_size: int = Field(8, ge=1)
    val_batch_size: int = Field(1, ge=1)
    workers: int = Field(2, ge=0)
    # Decoded training samples kept in memory, per process and loader worker (0: none).
    cache_mb: int = Field(2048, ge=0)


class OptimConfig(_Section):
    """Optimiser, learning-rate schedule, accumulation and clipping.

    The schedule is stepped once per optimiser step: a linear warm-up from
    ``lr * warmup_factor`` to ``lr`` over the warm-up, then ``poly`` (``(1 - t)**power``),
    ``cosine`` (down to ``lr * min_lr_ratio``) or ``none`` (fixed, as in the FCN paper)
    over the remaining steps.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-4, ge=0)
    # FCN (Long et al.) doubles the learning rate of biases and does not decay them.
    bias_lr_factor: float = Field(1.0, gt=0)
    # Learning rate of a pretrained encoder's parameters (modules under ``encoder.``) as a
    # factor of ``lr``: fine-tuning moves ImageNet features less than a fresh decoder.
    encoder_lr_factor: float = Field(1.0, gt=0)
    bias_weight_decay: float | None = Field(None, ge=0)
    schedule: Literal["poly", "cosine", "none"] = "poly"
    power: float = Field(0.9, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float = Field(0, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)

    @field_validator("warmup_epochs")
    @classmethod
    def _one_warmup(cls, v: float, info) -> float:
        if v and info.data.get("warmup_steps"):
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        return v


class LossConfig(_Section):
    """A loss from :func:`pixelwise.losses.build_loss` (``ignore_index``: the dataset's)."""

    name: str = "ce"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Section):
    """The training loop."""

    # None: 10 epochs, or as many as fit in train.max_minutes when that is set.
    epochs: int | None = Field(None, ge=1)
    # Caps optimiser steps per epoch (quick runs, time budgets); None = the whole dataset.
    steps_per_epoch: int | None = Field(None, ge=1)
    seed: int = 0
    # Deterministic algorithms and seeded everything: a resumed run matches an uninterrupted one.
    deterministic: bool = False
    amp: bool = True  # mixed precision, on CUDA only
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    # The fast path (pixelwise.fast): NHWC activations, the faster convolution kernels on CPU
    # (oneDNN) and on tensor cores; on CPU also 1x1 and fc-like convolutions as matrix
    # products and deep 3x3 ones by Winograd's F(4x4, 3x3); optimiser kernels without layout
    # copies; glibc malloc keeping freed activation buffers (millions of page faults per
    # epoch otherwise). false: the plain PyTorch path (NCHW, torch.optim, default allocator).
    fast: bool = True
    # Under torchrun: BatchNorm statistics over the global batch (worth it for small per-GPU
    # batches; costs a collective per BatchNorm layer).
    sync_batchnorm: bool = False
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    val_every: int = Field(1, ge=1)  # epochs
    # A binary (one-logit) model's validation labels: foreground where sigmoid >= this, the
    # rule of `pixelwise evaluate --threshold` / `predict --threshold` (inference/forward.py).
    val_threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1)
    best_metric: str = "mean_iou"
    best_mode: Literal["max", "min"] = "max"
    early_stopping_patience: int | None = Field(None, ge=1)  # validations without improvement
    # Time budget: the schedule is laid over the steps that fit in it (see training/budget.py);
    # training stops when the next step would not fit, then validates and checkpoints once
    # more. Validation time counts. Combined with epochs, whichever ends first.
    max_minutes: float | None = Field(None, gt=0)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    # last.pt at an epoch's end at most this often (best.pt and the run's end always write):
    # with epochs of a few steps (small data sets, short budgets) a write per epoch costs ~5%
    # of the time. A run killed in between resumes from the previous last.pt. None: every epoch.
    checkpoint_every_minutes: float | None = Field(None, gt=0)
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is importable

    @model_validator(mode="before")
    @classmethod
    def _legacy_switches(cls, data: Any) -> Any:
        # train.channels_last and train.tune_allocator were the fast path's switches before
        # train.fast; configs and checkpoints written with them read as train.fast.
        if isinstance(data, dict) and {"channels_last", "tune_allocator"} & data.keys():
            data = dict(data)
            legacy = [data.pop(k) for k in ("channels_last", "tune_allocator") if k in data]
            data.setdefault("fast", all(bool(v) for v in legacy))
        return data

    @field_validator("best_metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        from ..metrics import SUMMARY_METRICS

        known = {*SUMMARY_METRICS, "val_loss"}
        if v not in known:
            raise ValueError(f"unknown metric {v!r}; choose from {', '.join(sorted(known))}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class OutputConfig(_Section):
    """Where the run folder goes: ``dir/name``."""

    dir: str = "runs"
    name: str | None = None  # default: the config file's stem, else the model name
    overwrite: bool = False  # start afresh in an existing run folder

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError(f"run name must be a plain folder name, got {v!r}")
        return v


class RunConfig(_Section):
    """A complete training run (see the module docstring for the YAML form)."""

    model: ModelConfig
    data: DataConfig
    augment: dict[str, Any] | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / (self.output.name or self.model.name)

    @property
    def train_crop(self) -> tuple[int, int] | None:
        """The training crop as (height, width): ``data.crop_size``, else ``augment.crop``;
        None when training on whole images."""
        crop = self.data.crop_size
        if crop is None:
            crop = (self.augment or {}).get("crop")
        return None if crop is None else size_pair(crop)


def size_pair(size: Any) -> tuple[int, int] | None:
    """``(height, width)`` of a size written as ``N`` or ``[H, W]``; None for anything else."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if whole(size):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(whole(v) for v in size):
        return int(size[0]), int(size[1])
    return None


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "function-after", "function-before"}


def _dotted(loc: tuple[Any, ...]) -> str:
    # Unions add their member's type to the location (e.g. "data.crop_size.tuple[int, int]").
    return ".".join(str(p) for p in loc
                    if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = _dotted(e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{key}: {msg}")
    # De-duplicate (a union reports one error per member) but keep order.
    lines = list(dict.fromkeys(lines))
    return f"{source}: invalid config: " + "; ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Set ``a.b.c=value`` overrides in a nested dict (values parsed as YAML).

    Returns:
        A new dict; ``raw`` is not modified.
    """
    import copy

    out = copy.deepcopy(raw)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse value {text!r} as YAML: {e}") from e
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {'.'.join(parts[:i + 1])} is not a section "
                                  f"(it is {nxt!r})")
            node = nxt
        node[parts[-1]] = value
    return out


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`; errors name the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(raw).__name__}")
    _check_finite(raw, source)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    _check_model_kwargs(cfg.model, source)
    _check_loss(cfg.loss, source)
    return cfg


def _check_finite(node: Any, source: str, key: str = "") -> None:
    """No nan or inf anywhere (``.inf`` is valid YAML): in a range check inf passes a lower
    bound and nan every bound, and either fails later, after the run folder is made."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{source}: invalid config: {key}: must be a finite number "
                          f"(got {node})")
    children = (node.items() if isinstance(node, dict)
                else enumerate(node) if isinstance(node, (list, tuple)) else ())
    for name, child in children:
        _check_finite(child, source, f"{key}.{name}" if key else str(name))


def _check_loss(loss: LossConfig, source: str) -> None:
    # Build the loss once (cheap) so a wrong name or argument fails before any data is read.
    from ..losses import build_loss, list_losses

    if loss.name not in list_losses():
        raise ConfigError(f"{source}: invalid config: loss.name: unknown loss {loss.name!r}; "
                          f"available: {', '.join(list_losses())}")
    try:
        build_loss(loss.name, **loss.kwargs)
    except ValueError as e:
        raise ConfigError(f"{source}: invalid config: loss.kwargs: {e}") from None


def _check_model_kwargs(model: ModelConfig, source: str) -> None:
    # Catch a misspelt constructor argument now, not after the data has been scanned.
    from ..models.registry import model_parameters

    params = model_parameters(model.name)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in model.kwargs:
        if key not in params:
            raise ConfigError(f"{source}: invalid config: model.kwargs.{key}: model "
                              f"{model.name!r} has no argument {key!r}; it takes "
                              f"{', '.join(params)}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides and validate.

    Args:
        path: the YAML file (or None when ``raw`` is given).
        overrides: e.g. ``["optim.lr=0.01", "train.epochs=2"]``.
        raw: a config dict to use instead of reading ``path``.

    Returns:
        The validated :class:`RunConfig`. When ``output.name`` is unset it becomes the
        config file's stem, so that a rerun with ``--resume`` finds the same folder.
    """
    source = str(path) if path is not None else "config"
    if raw is None:
        if path is None:
            raise ConfigError("load_config needs a path or a raw dict")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(read_text(p, ConfigError)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if isinstance(raw, dict) and isinstance(raw.setdefault("output", {}), dict):
            raw["output"].setdefault("name", p.stem)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides), source)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain JSON-compatible dict (tuples become lists): what goes into checkpoints."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: RunConfig, path: str | os.PathLike | None = None) -> str:
    """The config as YAML text; also written atomically to ``path`` when given."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        atomic_write_text(path, text)
    return text
