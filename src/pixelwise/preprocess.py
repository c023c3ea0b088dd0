"""Image -> normalised tensor, the one place where pixel values are scaled.

Images are scaled to [0, 1] by their dtype's range (uint8 / 255, uint16 / 65535, floats kept),
then normalised per channel with the checkpoint's mean and std.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def scale_to_unit(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` array of any dtype -> float32 in [0, 1] (``(H, W, C)``)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        return (img.astype(np.float32) - info.min) / float(info.max - info.min)
    return img.astype(np.float32)


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W[, C])`` image -> normalised ``(C, H, W)`` float32 tensor."""
    img = scale_to_unit(image)
    if img.shape[-1] != len(mean):
        raise ValueError(f"image has {img.shape[-1]} channels but the normalisation has {len(mean)}")
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (t - m) / s
