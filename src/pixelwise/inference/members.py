"""The models behind a :class:`~pixelwise.inference.predict.Predictor`: one, or the members of
an ensemble, each with its own backend, normalisation and geometry.

A :class:`Member` turns a batch (normalised for it) into probabilities at the batch's size,
whole or tile by tile, exactly as a single-model Predictor always has; the Predictor averages
the members' probabilities. Members must agree on what a mask value means (class names, one
logit or a softmax, input channels: :func:`check_members`); each may have its own mean and std
and its own architecture and geometry.

A member's backend is opened when the Predictor is built (its metadata is checked then) and
kept, unless the Predictor holds members one at a time (``keep_loaded=False``): then it is
released after each use and opened again for the next, so only one member's weights are in
memory at a time, at the cost of a reload per image (or raster block).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.labels import LabelSet
from ..errors import CheckpointError, ConfigError
from ..io.checkpoint import Checkpoint
from ..models import geometry
from ..models.probe import meta_model, min_input_size
from .backend import Source, open_backend
from .forward import probabilities, whole_image_logits
from .tiling import mirror_pad, sliding_window


def source_name(source: Source) -> str:
    """How messages name a member: its file, or what it is when it has none."""
    if isinstance(source, bytes):
        return "ONNX model bytes"
    if isinstance(source, Checkpoint):
        return str(source.path) if source.path is not None else f"{source.model_name} checkpoint"
    return str(source)


def source_bytes(source: Source) -> int:
    """Rough size of a member's weights: its file's size (0 for a checkpoint in memory)."""
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Path(source).stat().st_size
    return 0


class Member:
    """One model: its backend (opened on demand), metadata and the geometry tiling needs.

    Args:
        source: what the backend runs (see :func:`pixelwise.inference.backend.open_backend`).
        backend, device, fast, compile, threads: the backend's options.
        tile_size: the Predictor's tile size, checked against this model (ConfigError).
    """

    def __init__(self, source: Source, backend: str, device: torch.device, fast: bool,
                 compile: bool, threads: int | None, tile_size: int | None):
        self.source, self.name = source, source_name(source)
        self._options = dict(backend=backend, device=device, fast=fast, compile=compile,
                             threads=threads)
        self._backend = self._open()
        self.backend = self._backend.name
        self.meta: dict[str, Any] = self._backend.metadata
        # The architecture on the meta device answers the geometry: it holds no weights, so a
        # released member keeps none in memory.
        self.shape_model = meta_model(self.meta["model_name"], self.meta.get("model_kwargs", {}))
        self.shrinks = geometry.shrinks(self.shape_model)
        self.min_input_size = self._check_tile_size(tile_size)

    def _open(self):
        return open_backend(self.source, **self._options)

    def release(self) -> None:
        """Drop the backend (and its weights); the next call opens it again."""
        self._backend = None

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    def _check_tile_size(self, tile_size: int | None) -> int:
        """The smallest side the model takes; refuses a tile size no tile of which it could
        take."""
        model = self.meta["model_name"]
        minimum = min_input_size(self.shape_model, len(self.mean))
        if tile_size is None:
            return minimum
        if self.shrinks:
            try:
                self.valid_tile(tile_size)
            except ValueError as e:
                raise ConfigError(f"tile_size: {e}") from None
        elif tile_size < minimum:
            raise ConfigError(f"tile_size: {tile_size} is too small for {model}: each side "
                              f"needs at least {minimum} pixels")
        return minimum

    def valid_tile(self, tile_size: int) -> int:
        """The largest exact input size of a valid-convolution model that fits ``tile_size``."""
        try:
            return geometry.largest_valid_input(self.shape_model, tile_size)
        except ValueError as e:
            raise ValueError(f"tile size {tile_size} is too small for {self.meta['model_name']}:"
                             f" {e}") from e

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model output for a normalised batch ``(N, C, h, w)`` (on the CPU).

        Raises:
            ValueError: a side is under the model's smallest input (checked here for every
                backend: an exported graph has lost the model's own check).
        """
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_size:
            raise ValueError(f"input {height}x{width} is too small for {self.meta['model_name']}:"
                             f" each side needs at least {self.min_input_size} pixels")
        if self._backend is None:
            self._backend = self._open()
        return self._backend(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a normalised batch (softmax, or sigmoid if binary)."""
        return probabilities(self.logits(x))

    def infer(self, x: torch.Tensor, tile_size: int | None, overlap: float, batch_size: int,
              progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)`` at the input's size, whole or in tiles of
        ``tile_size``; an input under the model's smallest size is mirrored out to it, and
        the result cropped back."""
        height, width = x.shape[-2:]
        if not self.shrinks and min(height, width) < self.min_input_size:
            grown = mirror_pad(x, 0, max(self.min_input_size - height, 0), 0,
                               max(self.min_input_size - width, 0))
            return self.infer(grown, tile_size, overlap, batch_size,
                              progress)[..., :height, :width]
        if tile_size is None:
            return probabilities(whole_image_logits(self.logits, x, self.shape_model))
        if self.shrinks:
            size = self.valid_tile(tile_size)
            out = geometry.output_shape(self.shape_model, size, size)[0]
            return sliding_window(self.probabilities, x, size, overlap, output_size=out,
                                  stride_multiple=geometry.total_stride(self.shape_model),
                                  batch_size=batch_size, progress=progress)
        return sliding_window(self.probabilities, x, tile_size, overlap, batch_size=batch_size,
                              progress=progress)


def _labelling(member: Member) -> dict[str, Any]:
    """What decides the meaning of a member's mask values."""
    labels = LabelSet.from_metadata(member.meta)
    return {"class names": list(labels.names),
            "output": "one logit (sigmoid, threshold)" if labels.binary else "softmax",
            "input channels": len(member.mean)}


def check_members(members: Sequence[Member]) -> None:
    """Every member labels masks the same way as the first: same class names, same kind of
    output (one logit and a threshold, or a softmax), same input channels.

    Raises:
        CheckpointError: one line naming the two files and what differs.
    """
    first, expected = members[0], _labelling(members[0])
    for other in members[1:]:
        for what, value in _labelling(other).items():
            if value != expected[what]:
                raise CheckpointError(
                    f"ensemble members disagree on {what}: {first.name} has {expected[what]}, "
                    f"{other.name} has {value}; an ensemble averages models of the same "
                    f"classes only")


def renormalise(x: torch.Tensor, src: Member, dst: Member) -> torch.Tensor:
    """A batch normalised with ``src``'s mean and std, normalised with ``dst``'s instead
    (the same tensor when they agree)."""
    if (src.mean, src.std) == (dst.mean, dst.std):
        return x
    shape = (1, -1, 1, 1)
    m0, s0 = torch.tensor(src.mean).view(shape), torch.tensor(src.std).view(shape)
    m1, s1 = torch.tensor(dst.mean).view(shape), torch.tensor(dst.std).view(shape)
    return (x * s0 + (m0 - m1)) / s1
