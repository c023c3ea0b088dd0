"""Boundary metrics on label maps: boundary F1 (BF score) and the 95th-percentile Hausdorff distance.

Both work on host arrays (numpy, or tensors moved to the CPU) one image at a time; they are
meant for evaluation, not for the training loop.

Boundary pixels: a pixel of a region is on its boundary when one of its 4 neighbours is
outside the region. Neighbours beyond the image edge or ignored in the target
(``target == ignore_index``) do not count, so neither the frame of the image nor the rim of
a void / field-of-view mask creates boundaries.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .confusion import mean_defined


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _to_numpy(pred), _to_numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W) masks, got shape {pred.shape}")
    return pred, target


def surface(region: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean region: region pixels with a valid 4-neighbour outside it.

    Shape:
        region, valid ``(H, W)`` bool -> ``(H, W)`` bool.
    """
    inside = region & valid
    outside = np.pad(valid & ~region, 1, constant_values=False)
    touches = (outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:])
    return inside & touches


def boundary_f1_per_class(pred, target, tolerance: float = 2.0, classes: Sequence[int] | None = None,
                          ignore_index: int = 255) -> dict[int, float | None]:
    """BF score of each class for one image.

    For class ``c``: precision = fraction of predicted boundary pixels within ``tolerance``
    (Euclidean, pixels) of a true boundary pixel; recall = the converse; BF = their harmonic
    mean. ``None`` when neither map has a boundary of ``c``; 0 when only one has.

    Args:
        pred, target: ``(H, W)`` integer label maps.
        tolerance: matching distance in pixels. SegNet (Badrinarayanan et al. 2017, after
            Csurka et al. 2013) uses 0.75% of the image diagonal:
            ``0.0075 * math.hypot(H, W)`` (4.5 px on CamVid's 360 x 480).
        classes: classes to score; None = those present in the valid part of either map.
        ignore_index: target value marking pixels to leave out.

    Returns:
        ``{class: score or None}``.
    """
    pred, target = _pair(pred, target)
    if pred.ndim != 2:
        raise ValueError(f"boundary_f1_per_class takes one (H, W) image, got shape {pred.shape}")
    valid = target != ignore_index
    if classes is None:
        classes = sorted(set(np.unique(target[valid]).tolist()) | set(np.unique(pred[valid]).tolist()))
    scores: dict[int, float | None] = {}
    for c in classes:
        bp = surface(pred == c, valid)
        bt = surface(target == c, valid)
        n_p, n_t = int(bp.sum()), int(bt.sum())
        if n_p == 0 and n_t == 0:
            scores[int(c)] = None
            continue
        if n_p == 0 or n_t == 0:
            scores[int(c)] = 0.0
            continue
        precision = float((ndimage.distance_transform_edt(~bt)[bp] <= tolerance).mean())
        recall = float((ndimage.distance_transform_edt(~bp)[bt] <= tolerance).mean())
        total = precision + recall
        scores[int(c)] = 0.0 if total == 0 else 2.0 * precision * recall / total
    return scores


def boundary_f1(pred, target, tolerance: float = 2.0, classes: Sequence[int] | None = None,
                ignore_index: int = 255) -> float | None:
    """Boundary F1 (BF score) of label maps, averaged as in SegNet.

    Per image, the mean of :func:`boundary_f1_per_class` over its defined classes; for a
    batch, the mean of those image scores. For a binary mask pass ``classes=[1]`` to score
    the foreground outline only.

    Args:
        pred, target: ``(H, W)`` or ``(N, H, W)`` integer label maps (numpy or torch).
        tolerance: matching distance in pixels (see :func:`boundary_f1_per_class`).
        classes: classes to score; None = those present in each image.
        ignore_index: target value marking pixels to leave out.

    Returns:
        The score in [0, 1], or None when no class has a boundary anywhere.
    """
    pred, target = _pair(pred, target)
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    per_image = [mean_defined(list(boundary_f1_per_class(
        p, t, tolerance=tolerance, classes=classes, ignore_index=ignore_index).values()))
        for p, t in zip(pred, target)]
    return mean_defined(per_image)


def _hd_surface(region: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`surface`, or, for a non-empty region that fills the whole valid area (and so
    has no neighbour outside it), the rim of that area: the region is then bounded by the
    image frame, and its distance to the other mask is finite, not ``inf``."""
    s = surface(region, valid)
    if s.any():
        return s
    return region & ~ndimage.binary_erosion(region, border_value=0)


def _hd95_one(pred: np.ndarray, target: np.ndarray, ignore_index: int,
              spacing: Sequence[float] | None) -> float | None:
    valid = target != ignore_index
    fp = (pred != 0) & valid
    ft = (target != 0) & valid
    if not fp.any() and not ft.any():
        return None
    if np.array_equal(fp, ft):
        return 0.0
    if not fp.any() or not ft.any():
        return float("inf")
    sp, st = _hd_surface(fp, valid), _hd_surface(ft, valid)
    d_pt = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    d_tp = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def hausdorff95(pred, target, ignore_index: int = 255,
                spacing: Sequence[float] | None = None) -> float | None:
    """95th-percentile symmetric Hausdorff distance between binary masks' surfaces.

    ``HD95 = max(P95 of d(pred surface -> target surface), P95 of d(target -> pred))``
    (the two directed 95th percentiles, linear interpolation, as in MONAI), with the
    surfaces defined in the module docstring and Euclidean distances.

    Args:
        pred, target: ``(H, W)`` or ``(N, H, W)`` masks; non-zero = foreground, except
            target pixels equal to ``ignore_index``, which are left out of both.
        ignore_index: see above.
        spacing: pixel size ``(dy, dx)`` for physical units; None = pixels.

    Returns:
        Distance (0 for identical masks); ``inf`` when exactly one mask is empty; None when
        both are empty. For a batch, the mean over images that are not None.
    """
    pred, target = _pair(pred, target)
    if pred.ndim == 2:
        return _hd95_one(pred, target, ignore_index, spacing)
    return mean_defined([_hd95_one(p, t, ignore_index, spacing) for p, t in zip(pred, target)])
