"""Predict masks for images: a :class:`Predictor` (torch or ONNX Runtime, tiling, test-time
augmentation) and :func:`predict_paths`, which writes masks, overlays and a summary for files,
folders and globs.

Test-time augmentation averages class probabilities (softmax, or sigmoid for a binary model)
over flips and scales; averaging logits would let one confident view dominate.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from ..io import atomic_write, atomic_write_bytes, encode_mask_png, encode_rgb_png
from ..labels import LabelSet, class_areas, class_pixels
from ..models import geometry
from ..models.probe import meta_model, min_input_size
from ..preprocess import adapt_channels, to_tensor
from ..visualize import overlay
from .backend import open_backend
from .forward import (DEFAULT_THRESHOLD, check_threshold, labels_from_probabilities,
                      probabilities, whole_image_logits)
from .tiling import sliding_window

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,))  # none, horizontal, vertical
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy")


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
            :class:`~pixelwise.checkpoint.Checkpoint` for ``"torch"``; an ``.onnx`` file from
            :func:`pixelwise.export.export_onnx` (or its bytes) for ``"onnxruntime"``.
        backend: ``"torch"`` or ``"onnxruntime"`` (:mod:`pixelwise.engine.backend`); a
            source or option the backend cannot take is a :class:`ConfigError`.
        tile_size: predict in tiles of this input size (``None``: the whole image at once;
            valid-convolution models then get a mirrored border, ``engine.forward``).
        overlap: tile overlap fraction.
        tta: average over horizontal and vertical flips.
        threshold: foreground probability threshold of a binary (one-logit) model.
        device: torch device for the torch backend (``"auto"``: CUDA when available).
        scales: test-time scales (e.g. ``(0.75, 1.0, 1.25)``), averaged with the flips.
        batch_size: tiles per forward pass.
        optimize: fold BatchNorm and use channels_last (torch backend; same results up to
            float rounding).
        compile: also ``torch.compile`` the model (inductor, freezing; torch backend); the
            first call per input shape compiles, so it pays off for many same-sized inputs.
        threads: ONNX Runtime intra-op threads (default: one per core).
        progress: called as ``progress(done, total)`` with the tiles of each pass.
    """

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | bytes, backend: str = "torch",
                 tile_size: int | None = None, overlap: float = 0.25, tta: bool = False,
                 threshold: float = DEFAULT_THRESHOLD, device: str | torch.device = "cpu",
                 scales: Sequence[float] = (1.0,), batch_size: int = 1, optimize: bool = False,
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
        from .distributed import resolve_device
        from .preflight import device_problem

        problem = device_problem(device)
        if problem is not None:
            raise ConfigError(f"device: {problem}")
        self.device = resolve_device(str(device))
        self._backend = open_backend(checkpoint, backend, device=self.device, optimize=optimize,
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
        """Probabilities ``(N, K, H, W)`` at the input's size, tiled as configured."""
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
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for dims in self.flips:
                p = self._infer(xs.flip(dims) if dims else xs)
                p = p.flip(dims) if dims else p
                if p.shape[-2:] != (height, width):
                    p = F.interpolate(p, size=(height, width), mode="bilinear",
                                      align_corners=False)
                total = p if total is None else total + p
        return total / (len(self.scales) * len(self.flips))

    def to_prediction(self, probs: torch.Tensor) -> Prediction:
        """``(K, H, W)`` probabilities -> :class:`Prediction` (argmax, or the threshold)."""
        mask = labels_from_probabilities(probs[None], self.threshold)[0]
        mask = mask.to(torch.uint8) if self.num_classes <= 256 else mask
        return Prediction(mask=mask.numpy(), probs=probs.float().numpy())

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W[, C])`` image -> normalised ``(C, H, W)`` tensor (grey <-> RGB adapted)."""
        image = np.asarray(image)
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

def collect_inputs(inputs: Iterable[str | os.PathLike],
                   suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Expand files, folders (their images, sorted) and glob patterns into image paths
    (``suffixes``: the file endings that folders and globs contribute).

    Raises:
        DataError: an input that is no file, no folder and matches nothing, or a folder
            without images.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise DataError(f"{path}: folder holds no images "
                                f"({', '.join(suffixes)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            matches = [p for p in matches if p.is_file() and p.suffix.lower() in suffixes]
            if not matches:
                raise DataError(f"{item}: no such file or folder, and no images match it")
            paths.extend(matches)
    seen, unique = set(), []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _read_image(path: Path) -> np.ndarray:
    from ..data import read_image

    return read_image(path)


def save_mask_png(path: str | os.PathLike, mask: np.ndarray, palette: list[tuple[int, int, int]],
                  class_names: list[str]) -> Path:
    """Write a class-index mask as a PNG (see :func:`~pixelwise.io.encode_mask_png`)."""
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


def predict_paths(predictor: Predictor, inputs: Iterable[str | os.PathLike],
                  output_dir: str | os.PathLike, save_probs: bool = False,
                  probs_format: str = "npy", overlay_alpha: float = 0.5,
                  progress: Callable[[int, int], None] | None = None,
                  skip_existing: bool = False, fail_fast: bool = False,
                  overwrite: bool = False) -> dict[str, Any]:
    """Predict every image among ``inputs`` and write the results to ``output_dir``.

    Per image ``<stem>``: ``<stem>_mask.png`` (palette PNG of class indices),
    ``<stem>_overlay.png`` (colours over the image) and, with ``save_probs``,
    ``<stem>_probs.npy`` (float32 ``(K, H, W)``) or ``<stem>_probs.tif`` (uint16, probability
    x 65535). ``summary.json`` lists every image with its class areas, the totals, and under
    ``failed`` each input that could not be predicted with the reason.

    Args:
        predictor: a :class:`Predictor`.
        inputs: files, folders and glob patterns.
        output_dir: created if missing.
        save_probs: also write probabilities.
        probs_format: ``"npy"`` or ``"tiff16"``.
        overlay_alpha: opacity of the mask colours in the overlay.
        progress: called as ``progress(done_images, total_images)``.
        skip_existing: keep the outputs of images predicted before (summary from their masks).
        fail_fast: raise at the first unreadable input instead of going on.
        overwrite: replace files in ``output_dir`` that pixelwise did not write (refused
            otherwise: :mod:`pixelwise.outputs`).

    Returns:
        The summary dict (also written as ``summary.json``).
    """
    from .batch import OutputOptions, plan_jobs, run_jobs, write_summary

    if probs_format not in ("npy", "tiff16"):
        raise ValueError(f"probs_format must be 'npy' or 'tiff16', got {probs_format!r}")
    out = Path(output_dir)
    opts = OutputOptions(save_probs=save_probs, probs_format=probs_format,
                         overlay_alpha=overlay_alpha)
    results = run_jobs(predictor, plan_jobs(collect_inputs(inputs)), out, opts,
                       skip_existing=skip_existing, fail_fast=fail_fast, progress=progress,
                       overwrite=overwrite, summary_name="summary.json")
    return write_summary(predictor, results, out)


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    return atomic_write_bytes(path, encode_rgb_png(rgb))
