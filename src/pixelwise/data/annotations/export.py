"""Predicted masks as polygons that LabelMe and COCO tools open (``pixelwise predict
--format labelme|coco``), for users who correct predictions there.

Each class region becomes its outline (:func:`.contours.class_polygons`), simplified within
1 px: 0.5 px for COCO's pixel-corner outlines, 0.3 px for LabelMe's outlines through pixel
centres (Pillow also paints the pixels each outline edge crosses, so a longer cut adds more).
Read back with the matching spec encoding, the polygons give the predicted mask again: on
CamVid's val masks, COCO exactly and LabelMe with IoU >= 0.99 per class
(tests/test_annotations_roundtrip.py).

- ``labelme``: ``<stem>.json`` beside ``<stem>_mask.png``, ``imagePath`` relative to it, so
  LabelMe opens the image with its polygons.
- ``coco``: one ``coco.json`` with every image (``file_name`` is the input's file name) and a
  category per class, ids 1, 2, ... in class order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...io import atomic_write_json
from . import coco, labelme
from .contours import class_polygons

FORMATS = ("labelme", "coco")
TOLERANCE = {"coco": 0.5, "labelme": 0.3}  # px


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def write_predictions(fmt: str, summary: dict, output_dir: str | os.PathLike,
                      coco_name: str = "coco.json", tolerance: float | None = None) -> list[Path]:
    """Write the polygons of every predicted image in ``summary`` (``summary.json``'s dict).

    Returns:
        The files written.
    """
    out = Path(output_dir)
    tolerance = TOLERANCE[fmt] if tolerance is None else tolerance
    names = list(summary["class_names"])
    written, images, annotations = [], [], []
    for i, entry in enumerate(summary["images"], start=1):
        mask = _mask(out / entry["mask"])
        kind = "crack" if fmt == "coco" else "centre"
        polygons = class_polygons(mask, len(names), kind, tolerance)
        if fmt == "labelme":
            stem = entry["mask"][: -len("_mask.png")]
            doc = labelme.document(os.path.relpath(entry["input"], out), mask.shape[0],
                                   mask.shape[1], [(names[c], p) for c, p in polygons])
            written.append(atomic_write_json(out / f"{stem}.json", doc))
            continue
        images.append({"id": i, "file_name": Path(entry["input"]).name,
                       "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        for c, poly in polygons:
            annotations.append(_coco_annotation(len(annotations) + 1, i, c + 1, poly))
    if fmt == "coco":
        written.append(atomic_write_json(out / coco_name, coco.document(images, annotations,
                                                                         names)))
    return written


def _coco_annotation(ann_id: int, image_id: int, category_id: int, poly: np.ndarray) -> dict:
    x, y = poly[:, 0], poly[:, 1]
    area = abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": [[round(float(v), 2) for v in poly.ravel()]], "area": area,
            "bbox": [float(x.min()), float(y.min()), float(x.max() - x.min()),
                     float(y.max() - y.min())]}
