"""Mask encodings: raw mask values -> class indices, as a spec's ``mask`` section says
(see :mod:`pixelwise.data.spec` for the encodings)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from .spec import DatasetSpec


def _as_single_band(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim == 2:
        return raw
    if (raw == raw[..., :1]).all():  # an RGB file holding a greyscale mask
        return raw[..., 0]
    raise DataError(f"{path}: colour mask, but mask.encoding is not 'rgb'")


def _bad_values(path: Path, values: np.ndarray, what: str) -> DataError:
    shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    return DataError(f"{path}: label values not in the spec: {shown} ({what})")


def encode_mask(raw: np.ndarray, spec: DatasetSpec, path: str | os.PathLike) -> np.ndarray:
    """Raw mask values -> ``(H, W)`` int64 class indices with ``ignore_index`` where ignored.

    Args:
        raw: ``(H, W)`` or ``(H, W, 3)`` mask as read by :func:`~pixelwise.data.read_mask`.
        spec: the dataset spec (its ``mask`` section, classes and ignore index).
        path: the file, named in errors.

    Raises:
        DataError: values (or colours) that the spec does not know.
    """
    path = Path(path)
    m, ignore, n = spec.mask, spec.ignore_index, spec.num_classes
    if m.encoding == "threshold":
        band = raw.max(axis=-1) if raw.ndim == 3 else raw
        return (band >= m.threshold).astype(np.int64) * m.instance_class
    if m.encoding == "instances":
        band = raw.max(axis=-1) if raw.ndim == 3 else raw
        return (band > 0).astype(np.int64) * m.instance_class
    if m.encoding == "rgb":
        return _encode_rgb(raw, spec, path)
    band = _as_single_band(raw, path)
    if not np.issubdtype(band.dtype, np.integer):
        if not np.array_equal(band, np.round(band)):
            raise DataError(f"{path}: mask has non-integer values; use mask.encoding threshold")
        band = band.astype(np.int64)
    values = np.unique(band)
    if values.size and values[0] < 0:
        raise _bad_values(path, values[values < 0], "negative")
    lut = np.full(int(values[-1]) + 1 if values.size else 1, -1, dtype=np.int64)
    if m.encoding == "indices":
        lut[: min(n, lut.size)] = np.arange(min(n, lut.size))
    else:
        for raw_value, cls in m.value_map.items():
            if 0 <= raw_value < lut.size:
                lut[raw_value] = cls
    # Raw values equal to ignore_index stay ignored unless the value map names them (ISBI's
    # 255 is a class); explicit ignore_values always win.
    passthrough = [] if m.value_map is not None and ignore in m.value_map else [ignore]
    for v in [*passthrough, *m.ignore_values]:
        if 0 <= v < lut.size:
            lut[v] = ignore
    unknown = values[lut[values] < 0]
    if unknown.size:
        if m.unmapped == "error":
            raise _bad_values(path, unknown, f"encoding {m.encoding}, {n} classes, "
                                             f"ignore_index {ignore}")
        lut[lut < 0] = ignore
    return lut[band]


def _encode_rgb(raw: np.ndarray, spec: DatasetSpec, path: Path) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise DataError(f"{path}: mask.encoding is 'rgb' but the mask is not an RGB image")
    m = spec.mask
    code = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(m.colors)}
    table.update({(r << 16) | (g << 8) | b: spec.ignore_index for r, g, b in m.ignore_colors})
    values, inverse = np.unique(code, return_inverse=True)
    mapped = np.array([table.get(int(v), -1) for v in values], dtype=np.int64)
    unknown = values[mapped < 0]
    if unknown.size:
        if m.unmapped == "error":
            colours = np.stack([unknown >> 16, (unknown >> 8) & 255, unknown & 255], axis=1)
            raise _bad_values(path, [tuple(int(x) for x in c) for c in colours], "colours")
        mapped[mapped < 0] = spec.ignore_index
    return mapped[inverse].reshape(code.shape)
