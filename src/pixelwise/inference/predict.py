"""Predict masks for images: a :class:`Predictor` (torch or ONNX Runtime, tiling, test-time
augmentation) and :func:`predict_image_file`, which writes one image's mask and overlay
(files, folders and globs: :func:`pixelwise.inference.batch.predict_paths`).

Test-time augmentation and ensembles average class probabilities (softmax, or sigmoid for a
binary model) over flips, scales and members; averaging logits would let one confident view
dominate. The models themselves (backends, normalisation, tiling) are
:mod:`pixelwise.inference.members`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..io.files import atomic_write, atomic_write_bytes, encode_mask_png, encode_rgb_png
from ..devices import device_problem, resolve_device
from ..data.labels import LabelSet, class_areas, class_pixels
from ..models import geometry
from ..data.preprocess import adapt_channels, to_tensor
from ..report.visualize import overlay
from .backend import Source
from .forward import DEFAULT_THRESHOLD, check_threshold, labels_from_probabilities
from .members import Member, check_members, renormalise, source_bytes
from .uncertainty import encode_png16, entropy, squared_norm, uncertainty_names, variance

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,))  # none, horizontal, vertical


LABEL_ROWS = 512  # rows labelled at a time (see Predictor.to_prediction)
# Members whose files add up to more than this are held one at a time (see Predictor).
KEEP_LOADED_BYTES = 1 << 30


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        mask: ``(H, W)`` class indices, uint8 (int64 for more than 256 classes); the
            post-processing applied when the Predictor has one.
        probs: ``(K, H, W)`` float32 probabilities; ``K = 1`` (foreground) for a binary model.
        entropy: ``(H, W)`` float32 normalised entropy of ``probs`` in ``[0, 1]``
            (:mod:`pixelwise.inference.uncertainty`), when the Predictor computes uncertainty.
        variance: ``(H, W)`` float32 normalised variance across the members and test-time
            views, when uncertainty is computed and there are several; else None.
    """

    mask: np.ndarray
    probs: np.ndarray
    entropy: np.ndarray | None = None
    variance: np.ndarray | None = None


class Predictor:
    """Turn images into class masks with a trained model or an ensemble of them.

    Args:
        checkpoint: what the backend runs: a checkpoint path or loaded
            :class:`~pixelwise.io.checkpoint.Checkpoint` for ``"torch"``; an ``.onnx`` file from
            :func:`pixelwise.export.export_onnx` (or its bytes) for ``"onnxruntime"``. A list
            of them is an ensemble: their probabilities are averaged (each member normalises
            its own input); they must agree on classes and channels (CheckpointError).
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
        uncertainty: also compute each prediction's ``entropy`` and ``variance``.
        postprocess: a post-processing spec applied to the masks of :meth:`predict` and
            :meth:`predict_batch` (:func:`pixelwise.inference.postprocess.apply_postprocessing`;
            None: none).
        keep_loaded: keep every member's model in memory (default: when their files add up
            to at most 1 GiB); otherwise one member is loaded at a time, for each image or
            raster block.
    """

    def __init__(self, checkpoint: Source | Sequence[Source], backend: str = "torch",
                 tile_size: int | None = None, overlap: float = 0.25, tta: bool = False,
                 threshold: float = DEFAULT_THRESHOLD, device: str | torch.device = "cpu",
                 scales: Sequence[float] = (1.0,), batch_size: int = 1, fast: bool = False,
                 compile: bool = False, threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None, uncertainty: bool = False,
                 postprocess: dict | None = None, keep_loaded: bool | None = None):
        self.threshold = check_threshold(threshold)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive, got {tuple(scales)}")
        if tile_size is not None and tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        self.tile_size, self.overlap = tile_size, overlap
        self.flips = FLIPS if tta else ((),)
        self.scales = tuple(float(s) for s in scales)
        self.batch_size, self.progress = batch_size, progress
        self.uncertainty, self.postprocess = uncertainty, postprocess
        problem = device_problem(device)
        if problem is not None:
            raise ConfigError(f"device: {problem}")
        self.device = resolve_device(str(device))
        sources = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
        if not sources:
            raise ConfigError("checkpoint: an ensemble needs at least one member")
        if keep_loaded is None:
            keep_loaded = sum(source_bytes(s) for s in sources) <= KEEP_LOADED_BYTES
        self.keep_loaded = keep_loaded or len(sources) == 1
        self.members: list[Member] = []
        for source in sources:
            self.members.append(Member(source, backend, self.device, fast, compile, threads,
                                       tile_size))
            if not self.keep_loaded:
                self.members[-1].release()
        check_members(self.members)
        self.backend = self.members[0].backend
        self.meta = self.members[0].meta
        # Name and colour of each mask value, and whether the model is binary.
        self.labels = LabelSet.from_metadata(self.meta)
        self.min_input_size = max(m.min_input_size for m in self.members)

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
        """The normalisation of :meth:`prepare` (the first member's)."""
        return self.members[0].mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.members[0].std

    @property
    def in_channels(self) -> int:
        return len(self.meta["mean"])

    @property
    def margin(self) -> int:
        """The widest valid-convolution margin among the members (0 for padded models)."""
        return max(geometry.margin(m.shape_model) for m in self.members)

    @property
    def views(self) -> int:
        """How many probability maps are averaged: members x scales x flips."""
        return len(self.members) * len(self.scales) * len(self.flips)

    # -- inference ----------------------------------------------------------------------

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)`` of a batch normalised by :meth:`prepare`, averaged
        over the members and the TTA views."""
        return self._average(x, squares=False)[0]

    def predict_with_squares(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`predict_tensor`, and the views' mean ``||p||^2`` ``(N, 1, H, W)`` float64
        for :func:`pixelwise.inference.uncertainty.variance` when the Predictor computes
        uncertainty over several views (else None)."""
        return self._average(x, squares=self.uncertainty and self.views > 1)

    def _average(self, x: torch.Tensor, squares: bool):
        """The mean of every member's every view, member after member (each member's input
        normalised for it; a member held one at a time is released after its views), and
        with ``squares`` the mean ``||p||^2``: one full-size sum of each, never a map per
        view."""
        total, norms = None, None
        for member in self.members:
            xm = renormalise(x, self.members[0], member)
            for p in self._member_views(member, xm):
                total = p if total is None else total + p
                if squares:
                    sq = squared_norm(p)
                    norms = sq if norms is None else norms + sq
            if not self.keep_loaded:
                member.release()
        views = self.views
        if views == 1:
            return total, None  # no copy of a huge image's one view
        return total / views, (norms / views if squares else None)

    def _member_views(self, member: Member, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """One member's probabilities of every test-time view, back at the input's size."""
        height, width = x.shape[-2:]
        for scale in self.scales:
            xs = x
            if scale != 1.0:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                self._check_scaled(scale, (height, width), size)
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for dims in self.flips:
                p = member.infer(xs.flip(dims) if dims else xs, self.tile_size, self.overlap,
                                 self.batch_size, self.progress)
                p = p.flip(dims) if dims else p
                if p.shape[-2:] != (height, width):
                    p = F.interpolate(p, size=(height, width), mode="bilinear",
                                      align_corners=False)
                yield p

    def _check_scaled(self, scale: float, size: tuple[int, int], scaled: tuple[int, int]) -> None:
        """Refuse a test-time scale that shrinks an image the model takes below its smallest
        input (an image that small as given is padded instead: the user chose it)."""
        minimum = self.min_input_size
        if any(not m.shrinks for m in self.members) and min(scaled) < minimum <= min(size):
            raise ValueError(f"scale {scale:g} (--scales) turns the {size[1]}x{size[0]} image "
                             f"into {scaled[1]}x{scaled[0]}, under the smallest input of "
                             f"{self.meta['model_name']} ({minimum} pixels a side); use "
                             f"scales of at least {minimum / min(size):.3g}")

    def to_prediction(self, probs: torch.Tensor,
                      squares: torch.Tensor | None = None) -> Prediction:
        """``(K, H, W)`` probabilities -> :class:`Prediction` (argmax, or the threshold; no
        post-processing), with the uncertainty when the Predictor computes it (``squares``:
        the views' mean ``||p||^2`` ``(1, H, W)`` from :meth:`predict_with_squares`)."""
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        mask = torch.empty(probs.shape[-2:], dtype=dtype)
        ent = torch.empty(probs.shape[-2:]) if self.uncertainty else None
        spr = torch.empty(probs.shape[-2:]) if self.uncertainty and squares is not None else None
        # By bands of rows: the labels come as int64, 8 bytes a pixel for the whole image.
        for top in range(0, probs.shape[-2], LABEL_ROWS):
            rows = probs[None, :, top:top + LABEL_ROWS]
            mask[top:top + LABEL_ROWS] = labels_from_probabilities(rows, self.threshold)[0]
            if ent is not None:
                ent[top:top + LABEL_ROWS] = entropy(rows)[0]
            if spr is not None:
                spr[top:top + LABEL_ROWS] = variance(rows, squares[None, :, top:top + LABEL_ROWS])[0]
        return Prediction(mask=mask.numpy(), probs=probs.float().numpy(),
                          entropy=None if ent is None else ent.numpy(),
                          variance=None if spr is None else spr.numpy())

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W[, C])`` image -> ``(C, H, W)`` tensor normalised with the first member's
        mean and std (grey <-> RGB adapted).

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

    def _predictions(self, batch: torch.Tensor) -> list[Prediction]:
        """The finished predictions of a prepared batch (uncertainty, post-processing)."""
        probs, squares = self.predict_with_squares(batch)
        out = []
        for k in range(probs.shape[0]):
            pred = self.to_prediction(probs[k], None if squares is None else squares[k])
            if self.postprocess is not None:
                from .postprocess import apply_postprocessing

                pred.mask = apply_postprocessing(pred.mask, self.postprocess).astype(
                    pred.mask.dtype, copy=False)
            out.append(pred)
        return out

    def predict(self, image: np.ndarray) -> Prediction:
        """Predict one ``(H, W[, C])`` image (any dtype; scaled as in training).

        Returns:
            :class:`Prediction` with ``mask (H, W)`` and ``probs (K, H, W)``.
        """
        return self._predictions(self.prepare(image)[None])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict several images; images of one size go through the model together."""
        results: list[Prediction | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(np.asarray(image).shape[:2]), []).append(i)
        for indices in by_size.values():
            batch = torch.stack([self.prepare(images[i]) for i in indices])
            for i, pred in zip(indices, self._predictions(batch)):
                results[i] = pred
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
    probabilities; and ``<stem>_entropy.png``, ``<stem>_variance.png`` when the predictor
    computes uncertainty); returns its ``summary.json`` entry.

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
    if pred.entropy is not None:
        files = uncertainty_names(stem, ".png", pred.variance is not None)
        for key, name, values in zip(("entropy", "variance"), files,
                                     (pred.entropy, pred.variance)):
            entry[key] = atomic_write_bytes(out / name, encode_png16(values)).name
    entry["classes"] = class_areas(class_pixels(pred.mask, len(names)), names)
    return entry


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    return atomic_write_bytes(path, encode_rgb_png(rgb))
