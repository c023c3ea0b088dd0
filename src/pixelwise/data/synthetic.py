"""A built-in synthetic dataset: textured shapes on cluttered backgrounds, deterministic by seed.

It lets the demo (and tests) run the whole pipeline with no download. Classes are told apart
by shape *and* texture, so a model must use spatial context, not one pixel's colour:

    0 background  smooth gradient + blobs of random colour
    1 disc        ellipses with a radial ring texture
    2 box         rotated rectangles with stripes
    3 triangle    triangles with a checkerboard

Colours are random per object (they overlap between classes), objects occlude each other,
and Gaussian noise is added to every pixel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASS_NAMES = ["background", "disc", "box", "triangle"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)]


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    a, b = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / size
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    for _ in range(rng.integers(2, 5)):  # soft blobs, so background is not flat
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 10, size / 4)]
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.6 * w) + rng.uniform(0, 1, 3)[None, None] * 0.6 * w
    return img


def _shape_mask(rng: np.random.Generator, cls: int, size: int, yy: np.ndarray,
                xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean region of one object and its texture in [0, 1]."""
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
    r = rng.uniform(0.08 * size, 0.2 * size)
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    period = rng.uniform(4, 7)
    if cls == 1:
        e = rng.uniform(0.6, 1.0)
        region = (u / r) ** 2 + (v / (r * e)) ** 2 <= 1
        texture = 0.5 + 0.5 * np.cos(2 * np.pi * np.hypot(u, v) / period)
    elif cls == 2:
        h = r * rng.uniform(0.5, 1.0)
        region = (np.abs(u) <= r) & (np.abs(v) <= h)
        texture = (np.floor(u / (period / 2)) % 2).astype(float)
    else:
        # equilateral-ish triangle: inside three half-planes
        region = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = theta + 2 * np.pi * k / 3
            region &= (xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi) <= r * 0.6
        texture = ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2).astype(float)
    return region, texture


def generate_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size, 3)`` uint8 image and its ``(size, size)`` uint8 class mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = _background(rng, size, yy, xx)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        region, texture = _shape_mask(rng, cls, size, yy, xx)
        dark, light = rng.uniform(0, 0.5, 3), rng.uniform(0.5, 1, 3)
        colour = dark[None, None] * (1 - texture[..., None]) + light[None, None] * texture[..., None]
        img[region] = colour[region]
        mask[region] = cls
    img = img + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def write_synthetic_dataset(root: str | Path, n_train: int = 160, n_val: int = 40,
                            size: int = 128, seed: int = 0) -> Path:
    """Write ``train`` and ``val`` splits of PNGs under ``root`` and a ``spec.yaml`` for them.

    Returns:
        The path of the dataset spec, loadable with :func:`pixelwise.data.load_spec`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = generate_sample(rng, size)
            Image.fromarray(image).save(root / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:04d}.png")
    spec = {
        "name": "synthetic-shapes",
        "root": ".",
        "class_names": CLASS_NAMES,
        "palette": [list(c) for c in PALETTE],
        "channels": 3,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "mask": {"encoding": "indices"},
        "splits": {s: {"images": f"{s}/images/*.png", "masks": f"{s}/masks/{{name}}"}
                   for s in ("train", "val")},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
