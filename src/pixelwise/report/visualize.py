"""Colours for class masks: palettes, colourised masks and overlays (uint8 numpy arrays)."""
from __future__ import annotations

import numpy as np


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), distinct for up to 256 classes."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def colorize(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 colours; indices past the palette are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]],
            alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised mask over an image (greyscale or RGB, any dtype scaled to uint8)."""
    rgb = to_rgb8(image)
    colours = colorize(mask, palette).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def palette_image(mask: np.ndarray, palette: list[tuple[int, int, int]]):
    """``(H, W)`` class indices (0..255) -> a PIL "P" image: pixel values stay the classes and
    the palette gives their colours (indices past the palette are black)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="P")
    flat = [v for colour in palette[:256] for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any ``(H, W)`` or ``(H, W, C)`` image -> ``(H, W, 3)`` uint8 for display."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = ((img.astype(np.float32) - lo) / max(hi - lo, 1e-8) * 255).round().astype(np.uint8)
    return img
