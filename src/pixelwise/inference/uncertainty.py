"""Per-pixel uncertainty from averaged class probabilities: entropy and variance.

- **Entropy** of the mean probabilities, divided by ``log K`` so that it lies in ``[0, 1]``:
  0 where one class has probability 1, 1 where all ``K`` are equally likely. A binary
  (sigmoid) model counts as two classes, ``(1 - p, p)``: its binary entropy over ``log 2``.
- **Variance**: how much the averaged predictions (ensemble members, test-time views) disagree:
  their summed per-class variance ``sum_k Var_v[p_vk] = mean_v ||p_v||^2 - ||mean_v p_v||^2``,
  divided by its largest possible value ``1 - 1/K`` (views one-hot on different classes,
  evenly), so it also lies in ``[0, 1]``. Only ``||p_v||^2``, one channel, is accumulated per
  view, not each view's probabilities. A binary model again counts as two classes.

Both are written as 16-bit images (``round(u * 65535)``).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _two_class(probs: torch.Tensor) -> torch.Tensor:
    """A sigmoid model's ``(N, 1, H, W)`` foreground probability as ``(N, 2, H, W)``."""
    return torch.cat([1 - probs, probs], dim=1) if probs.shape[1] == 1 else probs


def squared_norm(probs: torch.Tensor) -> torch.Tensor:
    """``||p||^2`` per pixel, ``(N, 1, H, W)`` float64 (a view's term of the variance)."""
    return _two_class(probs.double()).square().sum(1, keepdim=True)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Normalised entropy ``(N, H, W)`` float32 of probabilities ``(N, K, H, W)`` (K = 1: the
    sigmoid's foreground probability); ``0 log 0 = 0``."""
    p = _two_class(probs.double())
    h = -torch.xlogy(p, p).sum(1) / math.log(p.shape[1])
    return h.clamp(0.0, 1.0).float()


def variance(mean_probs: torch.Tensor, mean_squared_norm: torch.Tensor) -> torch.Tensor:
    """Normalised summed variance ``(N, H, W)`` float32 of the views whose mean
    probabilities and mean ``||p||^2`` (:func:`squared_norm`) are given."""
    p = _two_class(mean_probs.double())
    variance = mean_squared_norm[:, 0].double() - p.square().sum(1)
    # rounding can leave a tiny negative where every view agrees
    return (variance / (1.0 - 1.0 / p.shape[1])).clamp(0.0, 1.0).float()


def to_uint16(values: np.ndarray) -> np.ndarray:
    """A ``[0, 1]`` map as 16-bit integers ``round(u * 65535)``."""
    return np.clip(np.rint(np.asarray(values, np.float64) * 65535.0), 0, 65535).astype(np.uint16)


def encode_png16(values: np.ndarray) -> bytes:
    """A ``[0, 1]`` map ``(H, W)`` as a 16-bit greyscale PNG (``round(u * 65535)``)."""
    import io

    from PIL import Image

    from ..io.files import PNG_COMPRESS_LEVEL

    buffer = io.BytesIO()
    Image.fromarray(to_uint16(values)).save(buffer, format="PNG",
                                            compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def uncertainty_names(stem: str, suffix: str, variance: bool) -> list[str]:
    """The files of an input's uncertainty: ``<stem>_entropy<suffix>``, and
    ``<stem>_variance<suffix>`` when several views are averaged."""
    return [f"{stem}_entropy{suffix}"] + ([f"{stem}_variance{suffix}"] if variance else [])
