"""Image -> normalised tensor, the one place where pixel values are scaled.

Images are scaled to [0, 1] by their dtype's range (uint8 / 255, uint16 / 65535, floats kept),
then normalised per channel with the checkpoint's mean and std.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _range(dtype: np.dtype) -> tuple[float, float]:
    """(offset, span) that map the dtype's values to [0, 1]; floats are taken as already scaled."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max - info.min)
    return 0.0, 1.0


def scale_to_unit(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` array of any dtype -> float32 in [0, 1] (``(H, W, C)``)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    offset, span = _range(img.dtype)
    return (img.astype(np.float32) - offset) / span


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W[, C])`` image -> normalised ``(C, H, W)`` float32 tensor."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] != len(mean):
        raise ValueError(f"image has {img.shape[-1]} channels but the normalisation has {len(mean)}")
    offset, span = _range(img.dtype)
    # ((x - offset) / span - mean) / std as one multiply-add per pixel
    a = 1.0 / (span * np.asarray(std, dtype=np.float32))
    b = -(offset / span + np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    out = img.astype(np.float32) * a.astype(np.float32) + b.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
