"""Joint image/mask augmentation on numpy arrays, deterministic under a seed.

Every transform takes and returns ``(image (H, W, C), mask (H, W) int64)`` plus an explicit
``numpy.random.Generator``; geometry is applied to image and mask with one sampling grid
(image bilinear, mask nearest), so labels stay labels and both stay aligned. Images keep their
dtype (uint8 stays uint8), so :func:`pixelwise.data.preprocess.to_tensor` scales them afterwards.

Resampling uses ``torch.nn.functional.grid_sample`` / ``interpolate`` (already a dependency,
fast on CPU, one grid tensor serves both image and mask). Albumentations was not used: it
pulls in OpenCV, and its elastic transform smooths per-pixel noise with a Gaussian rather
than interpolating the U-Net paper's coarse 3x3 grid.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

_MASK_OUTSIDE = -1  # marks mask pixels sampled from outside the image before they get ignore


def _to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` -> ``(1, C, H, W)`` float32."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def _from_float(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """``(1, C, H, W)`` float -> ``(H, W, C)`` array of ``dtype`` (rounded and clipped if integer)."""
    arr = t[0].permute(1, 2, 0).numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    return np.ascontiguousarray(arr.astype(dtype))


def warp(image: np.ndarray, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray,
         ignore_index: int, padding: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    """Sample image (bilinear) and mask (nearest) at the same pixel coordinates.

    Args:
        image: ``(H, W, C)``.
        mask: ``(H, W)`` integer labels.
        ys, xs: ``(H', W')`` source row / column of every output pixel (pixel units).
        ignore_index: mask value for pixels sampled outside the image (``padding="zeros"``).
        padding: ``"zeros"`` (image 0, mask ``ignore_index``) or ``"reflection"``.

    Returns:
        ``(H', W', C)`` image of the input dtype and ``(H', W')`` int64 mask.
    """
    h, w = mask.shape
    gx = 2.0 * xs / max(w - 1, 1) - 1.0
    gy = 2.0 * ys / max(h - 1, 1) - 1.0
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32))[None]
    out = F.grid_sample(_to_float_tensor(image), grid, mode="bilinear", padding_mode=padding,
                        align_corners=True)
    # Shift labels by one so that zero padding marks "outside" unambiguously; float32 holds
    # integer labels exactly.
    m = torch.from_numpy(mask.astype(np.float32) - _MASK_OUTSIDE)[None, None]
    m = F.grid_sample(m, grid, mode="nearest", padding_mode=padding, align_corners=True)
    labels = m[0, 0].numpy().astype(np.int64) + _MASK_OUTSIDE
    labels[labels == _MASK_OUTSIDE] = ignore_index
    return _from_float(out, image.dtype), labels


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale`` (image bilinear, mask nearest)."""

    def __init__(self, scale: Sequence[float]):
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, image, mask, rng):
        s = rng.uniform(*self.scale)
        h, w = mask.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        img = F.interpolate(_to_float_tensor(image), size=size, mode="bilinear",
                            align_corners=False, antialias=s < 1)
        m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size,
                          mode="nearest-exact")
        return _from_float(img, image.dtype), m[0, 0].numpy().astype(np.int64)


class RandomCrop:
    """Random ``size`` crop; smaller inputs are padded (image 0, mask ``ignore_index``).

    With probability ``balanced`` the crop is placed around a pixel of one class, chosen
    uniformly among the classes present (nnU-Net's foreground oversampling, per class):
    rare classes (poles, signs, pedestrians) then reach the loss as often as any other, which
    a uniform crop of a road scene almost never gives them.
    """

    def __init__(self, size: int | Sequence[int], ignore_index: int, balanced: float = 0.0):
        self.size = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
        self.ignore_index = ignore_index
        self.balanced = float(balanced)

    def __call__(self, image, mask, rng):
        (ch, cw), (h, w) = self.size, mask.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=self.ignore_index)
        y, x = self._corner(mask, rng)
        return image[y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw]

    def _corner(self, mask: np.ndarray, rng) -> tuple[int, int]:
        (ch, cw), (h, w) = self.size, mask.shape
        if self.balanced > 0 and rng.random() < self.balanced:
            classes = np.unique(mask)
            classes = classes[classes != self.ignore_index]
            if classes.size:
                ys, xs = np.nonzero(mask == rng.choice(classes))
                k = int(rng.integers(len(ys)))
                # Any window that holds the pixel, clipped to the image.
                y = int(rng.integers(max(0, ys[k] - ch + 1), min(ys[k], h - ch) + 1))
                x = int(rng.integers(max(0, xs[k] - cw + 1), min(xs[k], w - cw) + 1))
                return y, x
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))


class RandomFlip:
    """Flip along ``axis`` (1 horizontal, 0 vertical) with probability ``p``."""

    def __init__(self, axis: int, p: float = 0.5):
        self.axis, self.p = axis, p

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            return np.flip(image, self.axis), np.flip(mask, self.axis)
        return image, mask


class RandomRotate90:
    """Rotate by a random multiple of 90 degrees (exact, no resampling)."""

    def __call__(self, image, mask, rng):
        k = int(rng.integers(0, 4))
        return np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k)


class RandomRotate:
    """Rotate about the centre by an angle uniform in ``[-degrees, degrees]``; corners that
    come from outside the image are 0 in the image and ``ignore_index`` in the mask."""

    def __init__(self, degrees: float, ignore_index: int):
        self.degrees, self.ignore_index = float(degrees), ignore_index

    def __call__(self, image, mask, rng):
        a = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
        h, w = mask.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        ys = cy + (yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)
        xs = cx + (yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
        return warp(image, mask, ys, xs, self.ignore_index, padding="zeros")


def elastic_displacement(shape: tuple[int, int], sigma: float, grid: int,
                         rng: np.random.Generator) -> np.ndarray:
    """The U-Net paper's smooth deformation field (Ronneberger et al. 2015, Sec. 3.1).

    Random displacement vectors on a coarse ``grid x grid`` grid, drawn from a Gaussian with
    ``sigma`` pixels standard deviation, bicubically interpolated to one vector per pixel.

    Returns:
        ``(2, H, W)`` float32 displacements (rows, columns) in pixels.
    """
    coarse = rng.normal(0.0, sigma, size=(1, 2, grid, grid)).astype(np.float32)
    fine = F.interpolate(torch.from_numpy(coarse), size=shape, mode="bicubic", align_corners=True)
    return fine[0].numpy()


class ElasticDeform:
    """Elastic deformation as in the U-Net paper, with probability ``p``.

    Image and mask are sampled with the same grid; borders reflect, as the paper mirrors
    its inputs, so no ignore region appears.
    """

    def __init__(self, sigma: float = 10.0, grid: int = 3, p: float = 1.0, ignore_index: int = 255):
        self.sigma, self.grid, self.p, self.ignore_index = float(sigma), int(grid), p, ignore_index

    def __call__(self, image, mask, rng):
        if rng.random() >= self.p:
            return image, mask
        h, w = mask.shape
        d = elastic_displacement((h, w), self.sigma, self.grid, rng)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        return warp(image, mask, yy + d[0], xx + d[1], self.ignore_index, padding="reflection")


class ColorJitter:
    """Random brightness, contrast and (3 channels) saturation factors in ``[1-x, 1+x]``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image, mask, rng):
        img = image.astype(np.float32)
        if self.brightness:
            img *= rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast:
            f = rng.uniform(1 - self.contrast, 1 + self.contrast)
            img = (img - img.mean()) * f + img.mean()
        if self.saturation and img.shape[-1] == 3:
            f = rng.uniform(1 - self.saturation, 1 + self.saturation)
            grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            img = (img - grey[..., None]) * f + grey[..., None]
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            img = np.clip(np.rint(img), info.min, info.max)
        return img.astype(image.dtype), mask


class Compose:
    """Apply transforms in order with one random generator.

    The generator is seeded per process: from ``seed`` in the main process (or
    ``torch.initial_seed()`` when ``seed`` is None), and in a DataLoader worker from the
    worker's seed (itself derived from torch's RNG, so ``torch.manual_seed`` makes a whole run
    reproducible and workers never repeat each other). Pass ``rng`` to control it directly.
    """

    def __init__(self, transforms: list, seed: int | None = None):
        self.transforms = list(transforms)
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._key: tuple | None = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), None if info is None else info.seed)
        if self._key != key:
            if info is not None:
                entropy = [info.seed] + ([] if self.seed is None else [self.seed])
            else:
                entropy = [torch.initial_seed() if self.seed is None else self.seed]
            self._rng, self._key = np.random.default_rng(entropy), key
        return self._rng

    def __call__(self, image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        rng = rng if rng is not None else self._generator()
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]}, seed={self.seed})"


AUGMENT_KEYS = ("scale", "crop", "balanced_crop", "hflip", "vflip", "rotate90", "rotate",
                "elastic", "color_jitter", "seed")


def _pair(value: Any, key: str) -> tuple[float, float]:
    if np.isscalar(value):
        return float(value), float(value)
    if len(value) != 2:
        raise ConfigError(f"augment.{key}: expected a number or two numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _probability(value: Any, key: str) -> float:
    # YAML's `hflip: true` would otherwise become p = 1.0: every image flipped, no augmentation.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"augment.{key}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def build_transforms(cfg: dict | None, train: bool, ignore_index: int) -> Compose:
    """Build the joint transform for training or evaluation.

    Args:
        cfg: augmentation settings (all optional; ``None`` or ``{}`` means none):
            ``scale: [0.5, 2.0]`` random rescale range; ``crop: 256`` or ``[h, w]`` random
            crop, padded with ``ignore_index``; ``balanced_crop: 0.5`` probability that a
            crop holds a pixel of a class drawn uniformly from those present;
            ``hflip: 0.5`` / ``vflip: 0.0`` flip probabilities; ``rotate90: true``;
            ``rotate: 15`` max degrees;
            ``elastic: true`` or ``{sigma: 10, grid: 3, p: 0.5}`` (U-Net paper's values are
            the defaults, p 1.0); ``color_jitter: 0.2`` or ``{brightness, contrast,
            saturation}``; ``seed: 0``.
        train: evaluation (``False``) applies no augmentation and keeps full images.
        ignore_index: mask value for padded / out-of-image pixels.

    Returns:
        A callable ``(image (H, W, C), mask (H, W)) -> (image, mask)``.

    Raises:
        ConfigError: unknown key or malformed value (the message names ``augment.<key>``).
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"augment.{unknown[0]}: unknown augmentation key "
                          f"(known: {', '.join(AUGMENT_KEYS)})")
    if not train:
        return Compose([], seed=cfg.get("seed"))
    ts: list = []
    if cfg.get("scale") is not None:
        lo, hi = _pair(cfg["scale"], "scale")
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.scale: need 0 < low <= high, got {cfg['scale']!r}")
        ts.append(RandomScale((lo, hi)))
    if cfg.get("crop") is not None:
        balanced = _probability(cfg.get("balanced_crop") or 0.0, "balanced_crop")
        ts.append(RandomCrop(tuple(int(v) for v in _pair(cfg["crop"], "crop")), ignore_index,
                             balanced))
    for key, axis in (("hflip", 1), ("vflip", 0)):
        if cfg.get(key) is not None and _probability(cfg[key], key) > 0:
            ts.append(RandomFlip(axis=axis, p=float(cfg[key])))
    if cfg.get("rotate90"):
        ts.append(RandomRotate90())
    if cfg.get("rotate"):
        ts.append(RandomRotate(float(cfg["rotate"]), ignore_index))
    if cfg.get("elastic"):
        ts.append(ElasticDeform(ignore_index=ignore_index, **_elastic_options(cfg["elastic"])))
    if cfg.get("color_jitter"):
        ts.append(ColorJitter(**_jitter_options(cfg["color_jitter"])))
    return Compose(ts, seed=cfg.get("seed"))


def _elastic_options(elastic: Any) -> dict:
    opts = {} if elastic is True else dict(elastic)
    bad = set(opts) - {"sigma", "grid", "p"}
    if bad:
        raise ConfigError(f"augment.elastic.{sorted(bad)[0]}: unknown (use sigma, grid, p)")
    return opts


def _jitter_options(jitter: Any) -> dict[str, float]:
    opts = ({"brightness": jitter, "contrast": jitter, "saturation": jitter}
            if np.isscalar(jitter) else dict(jitter))
    bad = set(opts) - {"brightness", "contrast", "saturation"}
    if bad:
        raise ConfigError(f"augment.color_jitter.{sorted(bad)[0]}: unknown "
                          "(use brightness, contrast, saturation)")
    return {k: float(v) for k, v in opts.items()}
