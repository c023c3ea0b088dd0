"""CVAT for images 1.1 XML: one file per split, as CVAT exports it (``annotations.xml``).

Read: ``<version>1.1</version>`` and each ``<image name width height>`` with its
``<polygon points="x,y;x,y;...">``, ``<box xtl ytl xbr ybr>``, ``<polyline points>``,
``<points points>`` and ``<mask rle left top width height>`` children. Shapes are drawn in
increasing ``z_order``, then document order. Polygons and boxes follow COCO's rule, as CVAT's
own mask export does (Datumaro rasterises them with pycocotools); polylines are drawn
``mask.line_width`` px wide and points as discs of radius ``mask.point_size`` (CVAT's mask
export leaves them out; this is our rule). A mask's ``rle`` is run lengths along the rows
of its box, zeros first. ``<tag>`` (image labels) is skipped; other shapes (cuboid,
ellipse, skeleton) are errors. The file is parsed once per process and kept.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ...errors import DataError
from .draw import coco_box_polygon
from .shapes import Record, Shape, by_file_name

VERSION = "1.1"
KINDS = {"polygon": "coco_polygon", "box": "coco_polygon", "polyline": "linestrip",
         "points": "point", "mask": "rle"}


def parse(path: Path) -> dict[str, list[Record]]:
    """The records of a CVAT XML file, indexed by file name (see :func:`.shapes.match`).

    Raises:
        DataError: a malformed file, naming the file and the shape.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a CVAT XML file ({e})") from None
    if root.tag != "annotations":
        raise DataError(f"{path}: not a CVAT XML file (root element <{root.tag}>)")
    version = (root.findtext("version") or "").strip()
    if version != VERSION:
        raise DataError(f"{path}: unknown CVAT format version {version or 'none'!r} "
                        f"(read: CVAT for images {VERSION})")
    if root.find("track") is not None:
        raise DataError(f"{path}: CVAT for video (<track>); export as CVAT for images 1.1")
    records = [_image(path, el) for el in root.iter("image")]
    return by_file_name(records)


def _image(path: Path, el: ET.Element) -> Record:
    name = el.get("name")
    try:
        record = Record(source=path, name=str(name), height=int(el.get("height")),
                        width=int(el.get("width")))
    except (TypeError, ValueError):
        raise DataError(f"{path}: <image id={el.get('id')!r}>: needs name, width and "
                        "height") from None
    if name is None or record.height <= 0 or record.width <= 0:
        raise DataError(f"{path}: <image id={el.get('id')!r}>: needs a name and a positive "
                        "width and height")
    for i, child in enumerate(el):
        if child.tag == "tag":
            continue
        where = f"image {name!r} shape {i} (<{child.tag}>)"
        if child.tag not in KINDS:
            raise DataError(f"{path}: {where}: unsupported shape (read: "
                            f"{', '.join(KINDS)})")
        try:
            record.shapes.append(_shape(child, where))
        except (TypeError, ValueError, KeyError) as e:
            raise DataError(f"{path}: {where} (label {child.get('label')!r}): bad "
                            f"attributes ({type(e).__name__}: {e})") from None
    return record


def _shape(el: ET.Element, where: str) -> Shape:
    label, z = el.attrib["label"], int(el.get("z_order", 0))
    if el.tag == "mask":
        counts = [int(c) for c in el.attrib["rle"].split(",")]
        box = [int(float(el.attrib[k])) for k in ("left", "top", "width", "height")]
        return Shape(label=label, kind="rle", where=where, z=z,
                     rle=(counts, box[3], box[2], "C", box[0], box[1]))
    if el.tag == "box":
        corners = [float(el.attrib[k]) for k in ("xtl", "ytl", "xbr", "ybr")]
        parts = (coco_box_polygon(*corners).reshape(-1, 2),)
    else:
        points = [[float(v) for v in pair.split(",")] for pair in el.attrib["points"].split(";")]
        array = np.asarray(points, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError("points must be 'x,y;x,y;...'")
        # <points> holds several points: one disc each.
        parts = tuple(array[i:i + 1] for i in range(len(array))) if el.tag == "points" \
            else (array,)
    return Shape(label=label, kind=KINDS[el.tag], where=where, parts=parts, z=z)
