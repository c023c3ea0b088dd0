"""LabelMe JSON: one file per image, as the LabelMe tool saves it.

Read: ``version`` (LabelMe 3, 4 or 5), ``imageHeight`` / ``imageWidth``, and ``shapes``, each
with ``label``, ``points`` (``[[x, y], ...]``) and ``shape_type`` (polygon, rectangle, circle,
line, linestrip, point; missing means polygon, as in LabelMe 3). ``imageData`` (the embedded
image) and ``imagePath`` are ignored: the image is the one the spec's glob found. Shapes are
drawn in file order as ``labelme.utils.shapes_to_label`` does (see :mod:`.draw`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DataError
from .shapes import Record, Shape

KNOWN_MAJOR_VERSIONS = ("3", "4", "5")
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point")


def read(path: str | Path) -> Record:
    """Parse one LabelMe JSON file.

    Raises:
        DataError: missing or unreadable file, not LabelMe JSON, an unknown ``version`` or
            ``shape_type``, or a shape without label or points (naming the file and shape).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a LabelMe JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(f"{path}: not a LabelMe JSON file (no 'shapes' list)")
    version = data.get("version")
    if version is not None and str(version).split(".")[0] not in KNOWN_MAJOR_VERSIONS:
        raise DataError(f"{path}: unknown LabelMe format version {version!r} (read: "
                        f"{', '.join(v + '.x' for v in KNOWN_MAJOR_VERSIONS)})")
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height is not None or width is not None:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for v in (height, width)):
            raise DataError(f"{path}: imageHeight / imageWidth must be positive integers, "
                            f"got {height!r} / {width!r}")
    record = Record(source=path, name=str(data.get("imagePath") or path.stem),
                    height=height, width=width)
    record.shapes = [_shape(path, i, s) for i, s in enumerate(data["shapes"])]
    return record


def _shape(path: Path, index: int, raw) -> Shape:
    where = f"shape {index}"
    if not isinstance(raw, dict):
        raise DataError(f"{path}: {where}: not a JSON object")
    label = raw.get("label")
    if not isinstance(label, str):
        raise DataError(f"{path}: {where}: no label")
    kind = raw.get("shape_type") or "polygon"
    if kind not in SHAPE_TYPES:
        raise DataError(f"{path}: {where} (label {label!r}): unsupported shape_type {kind!r} "
                        f"(read: {', '.join(SHAPE_TYPES)})")
    try:
        points = np.asarray(raw.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty((0, 1))
    if points.ndim != 2 or points.shape[1] != 2:
        raise DataError(f"{path}: {where} (label {label!r}): points must be [[x, y], ...]")
    return Shape(label=label, kind=kind, where=where, parts=(points,))


def document(image_path: str, height: int, width: int,
             shapes: list[tuple[str, np.ndarray]]) -> dict:
    """The LabelMe JSON (version 5) of polygons ``[(label, (N, 2) x, y), ...]``."""
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": [{"label": label, "points": [[float(x), float(y)] for x, y in poly],
                    "group_id": None, "description": "", "shape_type": "polygon",
                    "flags": {}, "mask": None} for label, poly in shapes],
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }
