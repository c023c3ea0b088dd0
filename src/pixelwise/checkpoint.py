"""Self-describing checkpoints.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {
      "format": "pixelwise-checkpoint", "version": 1,
      "model": {"name": "unet", "kwargs": {...}},
      "class_names": [...], "palette": [[r, g, b], ...] | None,
      "normalization": {"mean": [...], "std": [...]},   # on images scaled to [0, 1]
      "ignore_index": 255,
      "config": {...} | None,                           # the resolved run config
      "state_dict": {...},
      "training": {...} | None,                         # optimizer, scheduler, RNG... (trainer)
    }

``load_checkpoint(path)`` rebuilds the model from this alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError
from .io import atomic_torch_save
from .models.registry import build_model

FORMAT = "pixelwise-checkpoint"
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with everything needed to use it."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    palette: list[tuple[int, int, int]] | None = None
    ignore_index: int = 255
    config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.mean)


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict[str, Any],
                    class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...],
                    palette: list[tuple[int, int, int]] | None = None, ignore_index: int = 255,
                    config: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the checkpoint dict (see module docstring)."""
    if len(mean) != len(std):
        raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
    # Unwrap DDP / torch.compile so keys never carry "module." or "_orig_mod." prefixes.
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {
        "format": FORMAT,
        "version": VERSION,
        # The weights are in state_dict: never re-download a pretrained backbone on load.
        "model": {"name": model_name,
                  "kwargs": {k: v for k, v in model_kwargs.items() if k != "pretrained"}},
        "class_names": list(class_names),
        "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "ignore_index": int(ignore_index),
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": training,
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str,
                    model_kwargs: dict[str, Any], class_names: list[str],
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                    **extra: Any) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, fsync, rename).

    ``extra`` takes the optional fields of :func:`make_checkpoint` (palette, ignore_index,
    config, training).
    """
    ckpt = make_checkpoint(model, model_name, model_kwargs, class_names, mean, std, **extra)
    return atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate the raw checkpoint dict with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelwise checkpoint (no 'format': '{FORMAT}')")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this "
                              f"pixelwise understands ({VERSION}); upgrade pixelwise")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model described by a checkpoint and load its weights strictly.

    Returns:
        A :class:`Checkpoint` whose ``model`` is in eval mode on ``map_location``.
    """
    ckpt = read_checkpoint(path, map_location)
    name, kwargs = ckpt["model"]["name"], ckpt["model"]["kwargs"]
    try:
        model = build_model(name, **kwargs)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r}: {e}") from e
    model.to(map_location).eval()
    palette = ckpt.get("palette")
    return Checkpoint(
        model=model, model_name=name, model_kwargs=kwargs,
        class_names=list(ckpt["class_names"]),
        mean=tuple(ckpt["normalization"]["mean"]), std=tuple(ckpt["normalization"]["std"]),
        palette=[tuple(c) for c in palette] if palette is not None else None,
        ignore_index=ckpt.get("ignore_index", 255), config=ckpt.get("config"),
        training=ckpt.get("training"), path=Path(path),
    )
