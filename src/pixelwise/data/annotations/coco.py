"""COCO instance annotations: one JSON file per split (``images``, ``annotations``,
``categories``), as pycocotools reads it.

Categories map to ``class_names`` by name. ``segmentation`` may be polygons (a list of
``[x0, y0, x1, y1, ...]``, drawn by COCO's rule, :mod:`.draw`), uncompressed RLE
(``{"size": [h, w], "counts": [...]}``) or compressed RLE (``counts`` a string, decoded by
pycocotools: the optional extra ``pixelwise[annotations]``). ``iscrowd: 1`` regions become
``ignore_index``. Annotations are drawn in the file's order. The file is parsed once per
process and kept (keyed by path, size and modification time), not re-read per image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DataError
from .shapes import Record, Shape, by_file_name


def parse(path: Path) -> dict[str, list[Record]]:
    """The records of a COCO file, indexed by file name (see :func:`.shapes.match`).

    Raises:
        DataError: a malformed file, naming the file and the shape.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a COCO JSON file ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs 'images', 'annotations' "
                        "and 'categories' lists)")
    categories = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise DataError(f"{path}: categories[{i}]: needs an id and a name")
        categories[c["id"]] = c["name"]
    images = {}
    for i, im in enumerate(data["images"]):
        try:
            images[im["id"]] = Record(source=path, name=str(im["file_name"]),
                                      height=_positive(im["height"]),
                                      width=_positive(im["width"]))
        except (TypeError, KeyError, ValueError):
            raise DataError(f"{path}: images[{i}]: needs id, file_name and positive "
                            "integer height and width") from None
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}]: not a JSON object")
        where = f"annotation id {ann.get('id', f'[{i}]')}"
        record = images.get(ann.get("image_id"))
        if record is None:
            raise DataError(f"{path}: {where}: image_id {ann.get('image_id')!r} is not in images")
        if ann.get("category_id") not in categories:
            raise DataError(f"{path}: {where}: category_id {ann.get('category_id')!r} "
                            "is not in categories")
        record.shapes.append(_shape(path, where, ann, categories[ann["category_id"]], record))
    return by_file_name(list(images.values()))


def _positive(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(value)
    return value


def _shape(path: Path, where: str, ann: dict, label: str, record: Record) -> Shape:
    seg, crowd = ann.get("segmentation"), bool(ann.get("iscrowd", 0))
    where = f"{where} (image {record.name!r})"
    if isinstance(seg, list) and seg:
        parts = []
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2:
                raise DataError(f"{path}: {where} (label {label!r}): degenerate polygon: "
                                "needs an even number of coordinates")
            try:
                parts.append(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
            except (TypeError, ValueError):
                raise DataError(f"{path}: {where} (label {label!r}): polygon coordinates "
                                "must be numbers") from None
        return Shape(label=label, kind="coco_polygon", where=where, parts=tuple(parts),
                     crowd=crowd)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        counts, size = seg["counts"], seg["size"]
        ok_counts = isinstance(counts, str) or (
            isinstance(counts, list) and all(isinstance(c, int) for c in counts))
        if not ok_counts or not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(v, int) and v > 0 for v in size)):
            raise DataError(f"{path}: {where} (label {label!r}): RLE needs 'size' [h, w] and "
                            "integer or string 'counts'")
        return Shape(label=label, kind="rle", where=where, crowd=crowd,
                     rle=(counts, size[0], size[1], "F", 0, 0))
    raise DataError(f"{path}: {where} (label {label!r}): no polygon or RLE segmentation")


def document(images: list[dict], annotations: list[dict], class_names: list[str]) -> dict:
    """A COCO instances file; categories are ``class_names`` with ids 1, 2, ..."""
    return {
        "info": {"description": "pixelwise predictions"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": ""}
                       for i, n in enumerate(class_names)],
    }
