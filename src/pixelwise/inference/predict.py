"""Predict masks for images: a :class:`Predictor` (torch or ONNX Runtime, tiling, test-time
augmentation) and :func:`predict_image_file`, which writes one image's mask and overlay
(files, folders and globs: :func:`pixelwise.inference.batch.predict_paths`).

Test-time augmentation averages class probabilities (softmax, or sigmoid for a binary model)
over flips and scales; averaging logits would let one confident view dominate.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io.checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from ..io.files import atomic_write, atomic_write_bytes, encode_mask_png, encode_rgb_png
from ..devices import device_problem, resolve_device
from ..data.labels import LabelSet, class_areas, class_pixels
from ..models import geometry
from ..models.probe import meta_model, min_input_size
from ..data.preprocess import adapt_channels, to_tensor
from ..report.visualize import overlay
from .backend import open_backend
from .forward import (DEFAULT_THRESHOLD, check_threshold, labels_from_probabilities,
                      probabilities, whole_image_logits)
from .tiling import mirror_pad, sliding_window

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,))  # none, horizontal, vertical


LABEL_ROWS = 512  # rows labelled at a time (see Predictor.to_prediction)


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        mask: ``(H, W)`` class indices, uint8 (int64 for more than 256 classes).
        probs: ``(K, H, W)`` float32 probabilities; ``K = 1`` (foreground) for a binary model.
    """

    mask: np.ndarray
    probs: np.ndarray


class Predictor:
    """Turn images into class masks with a trained model.

    Args:
        checkpoint: what the backend runs: a checkpoint path or loaded
            :class:`~pixelwise.io.checkpoint.Checkpoint` for ``"torch"``; an ``.onnx`` file from
            :func:`pixelwise.export.export_onnx` (or its bytes) for ``"onnxruntime"``.
        backend: ``"torch"`` or ``"onnxruntime"`` (:mod:`pixelwise.inference.backend`); a
            source or option the backend cannot take is a :class:`ConfigError`.
        tile_size: predict in tiles of this input size (``None``: the whole image at once;
            valid-convolution models then get a mirrored border, ``inference.forward``).
        overlap: tile overlap fraction.
        tta: average over horizontal and vertical flips.
        threshold: foreground probability threshold of a binary (one-logit) model.
        device: torch device for the torch backend (``"auto"``: CUDA when available).
        scales: test-time scales (e.g. ``(0.75, 1.0, 1.25)``), averaged with the flips.
        batch_size: tiles per forward pass.
        fast: the fast path (BatchNorm folded, channels_last, the convolutions of
            :mod:`pixelwise.fast`; torch backend; same results up to float rounding).
            ``pixelwise predict`` turns it on by default.
        compile: also ``torch.compile`` the model (inductor, freezing; torch backend); the
            first call per input shape compiles, so it pays off for many same-sized inputs.
        threads: ONNX Runtime intra-op threads (default: one per core).
        progress: called as ``progress(done, total)`` with the tiles of each pass.
    """

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | bytes, backend: str = "torch",
                 tile_size: int | None = None, overlap: float = 0.25, tta: bool = False,
                 threshold: float = DEFAULT_THRESHOLD, device: str | torch.device = "cpu",
                 scales: Sequence[float] = (1.0,), batch_size: int = 1, fast: bool = False,
                 compile: bool = False, threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None):
        self.threshold = check_threshold(threshold)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive, got {tuple(scales)}")
        if tile_size is not None and tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        self.tile_size, self.overlap = tile_size, overlap
        self.flips = FLIPS if tta else ((),)
        self.scales = tuple(float(s) for s in scales)
        self.batch_size, self.progress = batch_size, progress
        problem = device_problem(device)
        if problem is not None:
            raise ConfigError(f"device: {problem}")
        self.device = resolve_device(str(device))
        self._backend = open_backend(checkpoint, backend, device=self.device, fast=fast,
                                     compile=compile, threads=threads)
        self.backend = self._backend.name
        self.meta = self._backend.metadata
        # Name and colour of each mask value, and whether the model is binary.
        self.labels = LabelSet.from_metadata(self.meta)
        self.shape_model = self._backend.shape_model  # answers the geometry for tiling
        self.shrinks = geometry.shrinks(self.shape_model)
        self.min_input_size = self._check_tile_size()

    def _check_tile_size(self) -> int:
        """The smallest side the model takes (from its shapes on the meta device); refuses a
        tile size no tile of which it could take."""
        name = self.meta["model_name"]
        net = meta_model(name, self.meta.get("model_kwargs", {}))
        minimum = min_input_size(net, self.in_channels)
        if self.tile_size is None:
            return minimum
        if self.shrinks:
            try:
                self._valid_tile(self.tile_size)
            except ValueError as e:
                raise ConfigError(f"tile_size: {e}") from None
        elif self.tile_size < minimum:
            raise ConfigError(f"tile_size: {self.tile_size} is too small for {name}: each side "
                              f"needs at least {minimum} pixels")
        return minimum

    # -- metadata -----------------------------------------------------------------------

    @property
    def binary(self) -> bool:
        """Whether the model has one logit (sigmoid + threshold) rather than a softmax."""
        return self.labels.binary

    @property
    def class_names(self) -> list[str]:
        """Name of each mask value (a binary model's 0 is ``"background"`` unless named)."""
        return list(self.labels.names)

    @property
    def num_classes(self) -> int:
        """Number of mask values."""
        return self.labels.num_classes

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """Colour of each mask value (the checkpoint's, else the PASCAL VOC colour map)."""
        return list(self.labels.palette)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    @property
    def in_channels(self) -> int:
        return len(self.meta["mean"])

    # -- inference ----------------------------------------------------------------------

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
        return self._backend(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a normalised batch (softmax, or sigmoid if binary)."""
        return probabilities(self.logits(x))

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)`` at the input's size, tiled as configured; an input
        under the model's smallest size is mirrored out to it, and the result cropped back."""
        height, width = x.shape[-2:]
        if not self.shrinks and min(height, width) < self.min_input_size:
            grown = mirror_pad(x, 0, max(self.min_input_size - height, 0), 0,
                               max(self.min_input_size - width, 0))
            return self._infer(grown)[..., :height, :width]
        if self.tile_size is None:
            return probabilities(whole_image_logits(self.logits, x, self.shape_model))
        if self.shrinks:
            size = self._valid_tile(self.tile_size)
            out = geometry.output_shape(self.shape_model, size, size)[0]
            return sliding_window(self.probabilities, x, size, self.overlap, output_size=out,
                                  stride_multiple=geometry.total_stride(self.shape_model),
                                  batch_size=self.batch_size, progress=self.progress)
        return sliding_window(self.probabilities, x, self.tile_size, self.overlap,
                              batch_size=self.batch_size, progress=self.progress)

    def _valid_tile(self, tile_size: int) -> int:
        """The largest exact input size of a valid-convolution model that fits ``tile_size``."""
        try:
            return geometry.largest_valid_input(self.shape_model, tile_size)
        except ValueError as e:
            raise ValueError(f"tile size {tile_size} is too small for {self.meta['model_name']}: "
                             f"{e}") from e

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)`` of a normalised batch, averaged over TTA views."""
        height, width = x.shape[-2:]
        total = None
        for scale in self.scales:
            xs = x
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                self._check_scaled(scale, (height, width), size)
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for dims in self.flips:
                p = self._infer(xs.flip(dims) if dims else xs)
                p = p.flip(dims) if dims else p
                if p.shape[-2:] != (height, width):
                    p = F.interpolate(p, size=(height, width), mode="bilinear",
                                      align_corners=False)
                total = p if total is None else total + p
        views = len(self.scales) * len(self.flips)
        return total if views == 1 else total / views  # no copy of a huge image's one view

    def _check_scaled(self, scale: float, size: tuple[int, int], scaled: tuple[int, int]) -> None:
        """Refuse a test-time scale that shrinks an image the model takes below its smallest
        input (an image that small as given is padded instead: the user chose it)."""
        minimum = self.min_input_size
        if not self.shrinks and min(scaled) < minimum <= min(size):
            raise ValueError(f"scale {scale:g} (--scales) turns the {size[1]}x{size[0]} image "
                             f"into {scaled[1]}x{scaled[0]}, under the smallest input of "
                             f"{self.meta['model_name']} ({minimum} pixels a side); use "
                             f"scales of at least {minimum / min(size):.3g}")

    def to_prediction(self, probs: torch.Tensor) -> Prediction:
        """``(K, H, W)`` probabilities -> :class:`Prediction` (argmax, or the threshold)."""
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        mask = torch.empty(probs.shape[-2:], dtype=dtype)
        # By bands of rows: the labels come as int64, 8 bytes a pixel for the whole image.
        for top in range(0, probs.shape[-2], LABEL_ROWS):
            rows = probs[None, :, top:top + LABEL_ROWS]
            mask[top:top + LABEL_ROWS] = labels_from_probabilities(rows, self.threshold)[0]
        return Prediction(mask=mask.numpy(), probs=probs.float().numpy())

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W[, C])`` image -> normalised ``(C, H, W)`` tensor (grey <-> RGB adapted).

        Raises:
            ValueError: NaN or infinite pixels (a float image's no-data): refused rather than
                predicted, as they would spread through the network's receptive field.
        """
        image = np.asarray(image)
        if image.dtype.kind in "fc" and not np.isfinite(image).all():
            bad = int(image.size - np.count_nonzero(np.isfinite(image)))
            raise ValueError(f"{bad} of {image.size} pixel values are not finite (NaN or "
                             f"infinite); replace them (e.g. with 0) before predicting")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim == 3 and image.shape[-1] != self.in_channels and image.shape[-1] in (1, 3) \
                and self.in_channels in (1, 3):
            image = adapt_channels(image, self.in_channels, "image")
        return to_tensor(image, self.mean, self.std)

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one ``(H, W[, C])`` image (any dtype; scaled as in training).

        Returns:
            :class:`Prediction` with ``mask (H, W)`` and ``probs (K, H, W)``.
        """
        probs = self.predict_tensor(self.prepare(image)[None])[0]
        return self.to_prediction(probs)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict several images; images of one size go through the model together."""
        results: list[Prediction | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(np.asarray(image).shape[:2]), []).append(i)
        for indices in by_size.values():
            batch = torch.stack([self.prepare(images[i]) for i in indices])
            probs = self.predict_tensor(batch)
            for k, i in enumerate(indices):
                results[i] = self.to_prediction(probs[k])
        return results  # type: ignore[return-value]


# -- files ---------------------------------------------------------------------------------

def _read_image(path: Path) -> np.ndarray:
    from ..data import read_image

    return read_image(path)


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: list[tuple[int, int, int]],
                  class_names: list[str]) -> Path:
    """Write a class-index mask as a PNG (see :func:`~pixelwise.io.files.encode_mask_png`)."""
    return atomic_write_bytes(path, encode_mask_png(mask, palette, class_names))


def _save_probs(path: Path, probs: np.ndarray, fmt: str) -> Path:
    if fmt == "npy":
        return atomic_write(path, lambda f: np.save(f, probs.astype(np.float32)))
    import io

    import tifffile

    scaled = np.clip(np.rint(probs * 65535.0), 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, scaled, photometric="minisblack", compression="zlib")
    return atomic_write_bytes(path, buffer.getvalue())


def predict_image_file(predictor: Predictor, path: Path, out: Path, stem: str,
                       save_probs: bool = False, probs_format: str = "npy",
                       overlay_alpha: float = 0.5) -> dict[str, Any]:
    """Predict one image file and write ``<stem>_mask.png``, ``<stem>_overlay.png`` (and the
    probabilities); returns its ``summary.json`` entry.

    Raises:
        DataError: an unreadable file, or one the model cannot take (named).
    """
    image = _read_image(path)
    try:
        pred = predictor.predict(image)
    except ValueError as e:  # e.g. a channel count the model does not take
        raise DataError(f"{path}: {e}") from e
    names, palette = predictor.class_names, predictor.palette
    entry = {"input": str(path), "height": int(pred.mask.shape[0]),
             "width": int(pred.mask.shape[1]),
             "mask": save_mask_png(out / f"{stem}_mask.png", pred.mask, palette, names).name}
    rgb = overlay(image, pred.mask, palette, overlay_alpha)
    entry["overlay"] = _save_png(out / f"{stem}_overlay.png", rgb).name
    if save_probs:
        suffix = "npy" if probs_format == "npy" else "tif"
        entry["probs"] = _save_probs(out / f"{stem}_probs.{suffix}", pred.probs,
                                     probs_format).name
    entry["classes"] = class_areas(class_pixels(pred.mask, len(names)), names)
    return entry


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    return atomic_write_bytes(path, encode_rgb_png(rgb))
