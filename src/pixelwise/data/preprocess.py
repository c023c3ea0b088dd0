"""Image -> model input: the one place where channels are adapted and pixel values scaled.

Images get the model's channel count (:func:`adapt_channels`), are scaled to [0, 1] by their
dtype's range (uint8 / 255, uint16 / 65535, floats kept), then normalised per channel with
the checkpoint's mean and std (:func:`to_tensor`).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError

# torchvision's ImageNet statistics: the default normalisation of 3-channel data (and of the
# pretrained encoders' inputs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def adapt_channels(image: np.ndarray, channels: int, path: str | os.PathLike) -> np.ndarray:
    """Give an ``(H, W, C)`` image the spec's (or model's) channel count.

    Greyscale is repeated to 3 channels; 3-channel colour becomes luminance (ITU-R 601-2,
    as Pillow's ``"L"``) for 1 channel; anything else must already match.

    Raises:
        DataError: another channel count, naming ``path``.
    """
    c = image.shape[-1]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if c == 3 and channels == 1:
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if np.issubdtype(image.dtype, np.integer):
            grey = np.clip(np.rint(grey), 0, np.iinfo(image.dtype).max)
        return grey.astype(image.dtype)[..., None]
    raise DataError(f"{path}: image has {c} channels but the dataset spec says channels={channels}")


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


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """``(H, W)`` class indices -> int64 tensor of its own (a cached mask is read-only)."""
    mask = np.ascontiguousarray(mask, dtype=np.int64)
    return torch.from_numpy(mask if mask.flags.writeable else mask.copy())


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W[, C])`` image -> normalised ``(C, H, W)`` float32 tensor."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] != len(mean):
        raise ValueError(f"image has {img.shape[-1]} channels but the normalisation has {len(mean)}")
    offset, span = _range(img.dtype)
    # ((x - offset) / span - mean) / std as one multiply-add per pixel, written channel by
    # channel straight into the (C, H, W) result: one float32 copy of the image at a time
    # (a 12000 x 12000 RGB image is 1.6 GB of it), not the three of cast, product, transpose.
    a = (1.0 / (span * np.asarray(std, dtype=np.float32))).astype(np.float32)
    b = (-(offset / span + np.asarray(mean, dtype=np.float32))
         / np.asarray(std, dtype=np.float32)).astype(np.float32)
    out = np.empty((img.shape[-1], *img.shape[:2]), dtype=np.float32)
    for c in range(img.shape[-1]):
        np.multiply(img[..., c], a[c], out=out[c], dtype=np.float32)
        out[c] += b[c]
    return torch.from_numpy(out)
