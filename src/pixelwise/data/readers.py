"""Read images and masks of any common format into numpy arrays.

PNG, JPEG, BMP and GIF go through Pillow; TIFF (multi-page, 16-bit, multi-band) through
tifffile; ``.npy`` through numpy and ``.mat`` (SBD's ``cls/*.mat``) through scipy. Every
failure raises :class:`~pixelwise.errors.DataError` with the file's path in the message, and
images above a pixel limit are refused from their header before any decoding, so that a
decompression bomb costs nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from ..errors import DataError

logger = logging.getLogger(__name__)

# 2**28 pixels: a 16384 x 16384 RGB image is 0.8 GB as uint8, already more than a data loader
# worker should hold. Pass max_pixels to raise it for whole-slide or satellite rasters.
DEFAULT_MAX_PIXELS = 2**28

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy")


def _check_pixels(path: Path, height: int, width: int, max_pixels: int | None) -> None:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if height * width > limit:
        raise DataError(f"{path}: {width}x{height} = {height * width} pixels is over the pixel "
                        f"limit of {limit} (possible decompression bomb); raise max_pixels if "
                        "the image is genuine")


_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def open_pil(source: Path | BinaryIO, formats: list[str] | None = None) -> Iterator[Image.Image]:
    """``Image.open`` (a path or a file object) with Pillow's decompression-bomb limit lifted.

    Pillow refuses headers over ``2 * Image.MAX_IMAGE_PIXELS`` (179 MP), below our default
    limit and whatever ``max_pixels`` the caller raised it to; the caller checks the header
    size against ``max_pixels`` right after opening, so that limit is the one that decides.
    The lock keeps concurrent threads from restoring each other's saved value.
    """
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(source, formats=formats)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _tiff_layout(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and axes string of the first series of a TIFF, read from its header."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return tuple(series.shape), series.axes


def _hw_from_tiff(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    return shape[axes.index("Y")], shape[axes.index("X")]


def image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image, read from its header only.

    Raises:
        DataError: the file is missing, not an image, or over the pixel limit.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            h, w = _hw_from_tiff(*_tiff_layout(path))
        elif path.suffix.lower() in (".npy", ".mat"):
            h, w = _read_array_file(path).shape[:2]
        else:
            with open_pil(path) as im:
                w, h = im.size
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file to the user
        raise DataError(f"{path}: unreadable image header ({type(e).__name__}: {e})") from e
    _check_pixels(path, h, w, max_pixels)
    return h, w


def _read_array_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    from scipy.io import loadmat

    # SBD stores the class mask as GTcls.Segmentation in a MATLAB struct.
    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    for key in ("GTcls", "GTinst"):
        if key in mat:
            return np.asarray(mat[key].Segmentation)
    arrays = [v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)]
    if len(arrays) != 1:
        raise DataError(f"{path}: expected GTcls.Segmentation or a single array in the .mat file")
    return arrays[0]


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    shape, axes = _tiff_layout(path)
    _check_pixels(path, *_hw_from_tiff(shape, axes), max_pixels)
    try:
        arr = tifffile.imread(path)
    except ValueError as e:
        if "imagecodecs" not in str(e):
            raise
        # tifffile needs the optional imagecodecs package for LZW/JPEG compression; Pillow
        # decodes those itself (DRIVE's images are LZW).
        return _read_tiff_pil(path)
    # Move Y, X to the front and fold every other axis (pages, channels, samples) into the
    # last one: a multi-page stack of single bands becomes a multi-band image.
    y, x = axes.index("Y"), axes.index("X")
    rest = [i for i in range(arr.ndim) if i not in (y, x)]
    arr = np.transpose(arr, [y, x, *rest])
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def _read_tiff_pil(path: Path) -> np.ndarray:
    from PIL import ImageSequence

    with open_pil(path) as im:
        pages = [_pil_to_array(page.copy(), path, keep_palette=True) for page in ImageSequence.Iterator(im)]
    pages = [p[..., None] if p.ndim == 2 else p for p in pages]
    return np.concatenate(pages, axis=-1)


def _pil_to_array(im: Image.Image, path: Path, keep_palette: bool) -> np.ndarray:
    mode = im.mode
    if mode == "P" and keep_palette:
        idx = np.asarray(im)
        lut = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        used = np.unique(idx)
        used = used[used < len(lut)]
        # A palette of greys (GIFs saved from greyscale) means the greys are the values; any
        # coloured entry (PASCAL VOC) means the indices are the classes.
        if len(used) == len(np.unique(idx)) and (lut[used] == lut[used, :1]).all():
            return lut[idx, 0]
        return idx
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("L" if mode == "1" else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        logger.info("%s: %s image, alpha channel dropped", path, mode)
        im = im.convert("L" if mode in ("LA", "La") else "RGB")
    arr = np.asarray(im)
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        # Pillow opens 16-bit greyscale PNGs as mode I (int32); keep the file's bit depth.
        arr = arr.astype(np.uint16)
    return arr


def _read_any(path: Path, max_pixels: int | None, keep_palette: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        suffix = path.suffix.lower()
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path, max_pixels)
        if suffix in (".npy", ".mat"):
            arr = _read_array_file(path)
            _check_pixels(path, arr.shape[0], arr.shape[1], max_pixels)
            return arr
        with open_pil(path) as im, warnings.catch_warnings():
            # Our own limit decides; Pillow's warnings (GIF frames re-check sizes while
            # loading) would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _check_pixels(path, im.size[1], im.size[0], max_pixels)
            im.load()
            return _pil_to_array(im, path, keep_palette)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files surface as many types
        raise DataError(f"{path}: unreadable or truncated file ({type(e).__name__}: {e})") from e


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image as ``(H, W, C)`` in its stored dtype (uint8, uint16, float32, ...).

    Palette images become RGB; an alpha channel is dropped (with a logged note); TIFF pages and
    samples become channels.

    Args:
        path: image file (PNG, JPEG, TIFF, BMP, GIF, NPY).
        max_pixels: refuse images with more pixels (default :data:`DEFAULT_MAX_PIXELS`).

    Returns:
        ``(H, W, C)`` array, ``C >= 1``.

    Raises:
        DataError: missing, unreadable or truncated file, or over the pixel limit.
    """
    path = Path(path)
    arr = _read_any(path, max_pixels, keep_palette=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def read_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a mask file's raw values: ``(H, W)`` for single-band, ``(H, W, 3)`` for RGB.

    Palette PNGs (PASCAL VOC) keep their palette indices, which are the class indices. No
    encoding is applied here; see :func:`pixelwise.data.spec.encode_mask`.

    Raises:
        DataError: missing, unreadable or truncated file, or over the pixel limit.
    """
    path = Path(path)
    arr = _read_any(path, max_pixels, keep_palette=True)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2-D mask, got an array of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr
