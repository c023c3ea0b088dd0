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
from .shapes import polygon_area

FORMATS = ("labelme", "coco")
TOLERANCE = {"coco": 0.5, "labelme": 0.3}  # px, see the module docstring


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def write_labelme(image: str | os.PathLike, mask: np.ndarray, path: str | os.PathLike,
                  class_names: list[str], tolerance: float = TOLERANCE["labelme"]) -> Path:
    """Write ``mask`` (class indices) as the LabelMe JSON ``path`` of ``image``."""
    path = Path(path)
    polygons = class_polygons(mask, len(class_names), "centre", tolerance)
    doc = labelme.document(os.path.relpath(image, path.parent), mask.shape[0], mask.shape[1],
                           [(class_names[c], p) for c, p in polygons])
    return atomic_write_json(path, doc)


def coco_document(items: list[tuple[str | os.PathLike, np.ndarray]], class_names: list[str],
                  tolerance: float = TOLERANCE["coco"]) -> dict:
    """A COCO file of ``(image, mask)`` pairs; ``file_name`` is the image's file name."""
    images, annotations = [], []
    for i, (image, mask) in enumerate(items, start=1):
        images.append({"id": i, "file_name": Path(image).name,
                       "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        for c, poly in class_polygons(mask, len(class_names), "crack", tolerance):
            annotations.append(_coco_annotation(len(annotations) + 1, i, c + 1, poly))
    return coco.document(images, annotations, class_names)


def write_predictions(fmt: str, summary: dict, output_dir: str | os.PathLike,
                      coco_name: str = "coco.json") -> list[Path]:
    """Write the polygons of every predicted image in ``summary`` (``summary.json``'s dict):
    ``<stem>.json`` beside each ``<stem>_mask.png`` (labelme) or one ``coco_name`` (coco).

    Returns:
        The files written.
    """
    out = Path(output_dir)
    names = list(summary["class_names"])
    items = [(entry["input"], out / entry["mask"]) for entry in summary["images"]]
    if fmt == "labelme":
        return [write_labelme(image, _mask(mask), out / (mask.name[: -len("_mask.png")] + ".json"),
                              names) for image, mask in items]
    doc = coco_document([(image, _mask(mask)) for image, mask in items], names)
    return [atomic_write_json(out / coco_name, doc)]


def _coco_annotation(ann_id: int, image_id: int, category_id: int, poly: np.ndarray) -> dict:
    x, y = poly[:, 0], poly[:, 1]
    area = polygon_area(poly)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "segmentation": [[round(float(v), 2) for v in poly.ravel()]], "area": area,
            "bbox": [float(x.min()), float(y.min()), float(x.max() - x.min()),
                     float(y.max() - y.min())]}
