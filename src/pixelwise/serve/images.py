"""Uploaded bytes -> checked, decoded image; mask -> the JSON answer (areas, PNGs).

Every check happens in the cheapest order: magic bytes (is this an image type we accept?),
then the header's width x height (a decompression bomb is refused before a single pixel is
decoded), then the full decode (a truncated or corrupt file fails here).
"""
from __future__ import annotations

import base64
import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.readers import open_pil
from ..errors import PixelwiseError
from ..inference.uncertainty import encode_png16
from ..io.files import encode_mask_png, encode_rgb_png
from ..data.labels import LabelSet, class_areas, class_pixels
from ..data.preprocess import adapt_channels
from ..report.visualize import overlay, to_rgb8

# Magic bytes -> (format name, PIL format). Decided from the bytes, never from a client's
# Content-Type or file name, which are only hints.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
ACCEPTED_FORMATS = ("png", "jpeg", "tiff", "bmp", "webp")
ACCEPTED_MEDIA_TYPES = tuple(f"image/{f}" for f in ACCEPTED_FORMATS)


class ImageRejected(PixelwiseError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class DecodedImage:
    """A decoded upload: ``array`` is ``(H, W, C)`` uint8 or uint16, C = the model's channels."""

    array: np.ndarray
    format: str

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[0], self.array.shape[1]


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes at the start of ``data``, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, *, max_pixels: int, in_channels: int | None) -> DecodedImage:
    """Check and decode an uploaded image.

    Args:
        data: the uploaded file's bytes.
        max_pixels: the largest width x height accepted, checked on the header before decoding.
        in_channels: channels the model takes (1 -> greyscale, 3 -> RGB; None keeps RGB).

    Returns:
        The decoded image, alpha dropped, converted to the model's channel count.

    Raises:
        ImageRejected: 400 empty or corrupt/truncated, 413 too many pixels, 415 not an
            accepted image type.
    """
    if not data:
        raise ImageRejected(400, "empty upload: the file has 0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(415, "unsupported file type: not a PNG, JPEG, TIFF, BMP or WebP image "
                                 "(checked from the file's bytes)")
    opened = contextlib.ExitStack()
    try:
        # Pillow's own limit (179 MP) is lifted while opening: max_pixels, checked below on
        # the header, is the limit that decides and that the 413 quotes.
        img = opened.enter_context(open_pil(io.BytesIO(data), formats=[fmt.upper()]))
    except UnidentifiedImageError as e:
        raise ImageRejected(400, f"corrupt {fmt} image: its header cannot be read") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageRejected(400, f"corrupt {fmt} image: its header cannot be read ({e})") from e
    with opened:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(413, f"image too large: {width}x{height} = {width * height} pixels, "
                                     f"the limit is {max_pixels}")
        if width == 0 or height == 0:
            raise ImageRejected(400, f"{fmt} image has no pixels ({width}x{height})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageRejected(413, f"image too large: {e}") from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageRejected(400, f"corrupt or truncated {fmt} image ({e})") from e
        # Browsers show JPEGs and TIFFs turned by their EXIF orientation; turn the pixels the
        # same way so the mask lines up with what the user sees.
        ImageOps.exif_transpose(img, in_place=True)
        array = _to_channels(img, in_channels)
    return DecodedImage(array=array, format=fmt)


# PIL modes of 16-bit (and 32-bit integer) greyscale, kept deeper than 8 bits.
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I")


def _to_channels(img: Image.Image, in_channels: int | None) -> np.ndarray:
    """A loaded PIL image -> ``(H, W, C)`` array with the model's channel count."""
    channels = 3 if in_channels is None else in_channels
    if channels not in (1, 3):
        raise ImageRejected(415, f"this model takes {in_channels}-channel input; uploads are "
                                 "decoded as greyscale or RGB only")
    if img.mode in _DEEP_GREY:
        # Microscopy and remote sensing: keep the depth, PIL's RGB conversion of these modes
        # would clip it to 8 bits.
        array = np.clip(np.asarray(img).astype(np.int64), 0, 65535).astype(np.uint16)[..., None]
    elif img.mode in ("1", "L", "LA"):
        array = np.asarray(img.convert("L"))[..., None]
    else:
        array = np.asarray(img.convert("RGB"))
    return adapt_channels(array, channels, "upload")


def legend(labels: LabelSet) -> list[dict[str, Any]]:
    """Index, name and colour of every mask value (``GET /model``'s classes)."""
    return [{"index": i, "name": name, "color": list(colour)}
            for i, (name, colour) in enumerate(zip(labels.names, labels.palette))]


def area_entries(mask: np.ndarray, labels: LabelSet) -> list[dict[str, Any]]:
    """The :func:`legend` with the pixels and fraction of the image of every mask value."""
    counts = class_pixels(mask, labels.num_classes)
    # Keyed by index, not name: nothing stops two classes from sharing a name.
    areas = class_areas(counts, range(labels.num_classes))
    return [{**entry, **areas[entry["index"]]} for entry in legend(labels)]


def json_result(image: np.ndarray, mask: np.ndarray, labels: LabelSet, alpha: float,
                uncertainty: np.ndarray | None = None) -> dict:
    """The JSON body of ``/predict?format=json`` (PNG payloads base64-encoded); with an
    ``uncertainty`` map in ``[0, 1]``, also ``uncertainty_png`` (16-bit greyscale)."""
    colours = list(labels.palette)
    over = overlay(to_rgb8(image), mask, colours, alpha=alpha)
    body = {
        "width": int(mask.shape[1]), "height": int(mask.shape[0]),
        "classes": area_entries(mask, labels),
        "mask_png": base64.b64encode(encode_mask_png(mask, colours, labels.names)).decode("ascii"),
        "overlay_png": base64.b64encode(encode_rgb_png(over)).decode("ascii"),
        "overlay_alpha": alpha,
    }
    if uncertainty is not None:
        body["uncertainty_png"] = base64.b64encode(encode_png16(uncertainty)).decode("ascii")
    return body
