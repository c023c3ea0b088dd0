"""One image's shapes, whatever tool wrote them, and how they become a class-index mask.

A reader (labelme.py, coco.py, cvat.py) turns its file into :class:`Record` s of
:class:`Shape` s; :func:`rasterise` draws them. Overlaps: shapes are drawn in increasing
``z`` (CVAT's ``z_order``; 0 elsewhere) and, within one ``z``, in the order the file lists
them; a later shape paints over an earlier one. Pixels no shape covers are class 0.
A shape's class is its label's index in ``class_names``; the label ``__ignore__`` (LabelMe's
convention) and COCO's ``iscrowd`` regions become ``ignore_index``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import DataError
from . import draw

if TYPE_CHECKING:
    from ..spec import DatasetSpec

IGNORE_LABEL = "__ignore__"
EXTRA_HINT = "pip install 'pixelwise[annotations]'"
FAR_OUTSIDE = 10  # image sizes


@dataclass(frozen=True)
class Shape:
    """One annotated shape.

    Attributes:
        label: the tool's label (a class name, or ``__ignore__``).
        kind: polygon, rectangle, circle, line, linestrip, point (drawn by Pillow, LabelMe's
            rule), coco_polygon (COCO's rule; ``parts`` may hold several), rle.
        where: how errors name it, e.g. ``"shape 3"`` or ``"annotation id 17"``.
        parts: ``(N, 2)`` x, y arrays (one per polygon part).
        rle: for ``kind == "rle"``: ``(counts, height, width, order, left, top)``.
        z: drawing layer (CVAT ``z_order``).
        crowd: COCO ``iscrowd``: the region is ignored.
    """

    label: str
    kind: str
    where: str
    parts: tuple[np.ndarray, ...] = ()
    rle: tuple | None = None
    z: int = 0
    crowd: bool = False


@dataclass
class Record:
    """The shapes of one image, from annotation file ``source``."""

    source: Path
    name: str
    height: int | None
    width: int | None
    shapes: list[Shape] = field(default_factory=list)


def shape_error(record: Record, shape: Shape, problem: str) -> str:
    return f"{record.source}: {shape.where} (label {shape.label!r}): {problem}"


def degenerate(shape: Shape) -> str | None:
    """Why a shape cannot be drawn, or None. Point counts follow LabelMe's own asserts."""
    need = {"circle": 2, "rectangle": 2, "line": 2, "point": 1}
    for part in shape.parts:
        if part.ndim != 2 or part.shape[1] != 2 or not np.isfinite(part).all():
            return "degenerate shape: points must be finite x, y pairs"
        n = len(part)
        if shape.kind in need and n != need[shape.kind]:
            return f"degenerate {shape.kind}: {n} point(s), needs {need[shape.kind]}"
        if shape.kind == "linestrip" and n < 2:
            return f"degenerate linestrip: {n} point(s), needs at least 2"
        if shape.kind in ("polygon", "coco_polygon") and n < 3:
            return f"degenerate polygon: {n} point(s), needs at least 3"
        if shape.kind == "coco_polygon" and polygon_area(part) == 0:
            return "degenerate polygon: zero area (its points are on one line)"
        if shape.kind == "circle" and np.array_equal(part[0], part[1]):
            return "degenerate circle: zero radius"
    return None


def polygon_area(part: np.ndarray) -> float:
    """Shoelace area of an ``(N, 2)`` polygon."""
    x, y = part[:, 0], part[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:])
                     + x[-1] * y[0] - y[-1] * x[0])) / 2


def shape_value(spec: DatasetSpec, shape: Shape) -> int | None:
    """The class index (or ignore_index) a shape paints; None for an unknown label."""
    if shape.crowd or shape.label == IGNORE_LABEL:
        return spec.ignore_index
    try:
        return spec.class_names.index(shape.label)
    except ValueError:
        return None


def record_problems(spec: DatasetSpec, record: Record, image: Path,
                    hw: tuple[int, int]) -> list[str]:
    """Every problem of one image's record: size, labels, degenerate shapes, bad RLE."""
    problems = []
    if record.height is not None and (record.height, record.width) != tuple(hw):
        problems.append(f"{record.source}: image {record.name!r} is {record.width}x"
                        f"{record.height} in the annotations but {image} is {hw[1]}x{hw[0]}")
    for shape in record.shapes:
        if shape_value(spec, shape) is None:
            problems.append(shape_error(record, shape, "label not in class_names "
                                        f"({', '.join(spec.class_names)})"))
        problem = _rle_problem(shape, hw) if shape.kind == "rle" else \
            degenerate(shape) or _far_outside(shape, hw)
        if problem:
            problems.append(shape_error(record, shape, problem))
    return problems


def _far_outside(shape: Shape, hw: tuple[int, int]) -> str | None:
    """Points more than FAR_OUTSIDE image sizes away: a broken file, and a polygon the COCO
    rule (which walks every edge on a 5x finer grid) would need gigabytes to draw."""
    h, w = hw
    for part in shape.parts:
        x, y = part[:, 0], part[:, 1]
        if (np.abs(x - w / 2) > FAR_OUTSIDE * w).any() or \
                (np.abs(y - h / 2) > FAR_OUTSIDE * h).any():
            return f"points far outside the {w}x{h} image"
    return None


def _rle_problem(shape: Shape, hw: tuple[int, int]) -> str | None:
    counts, h, w, order, left, top = shape.rle
    if order == "F" and (h, w) != tuple(hw):
        return f"RLE size {w}x{h} does not match the image ({hw[1]}x{hw[0]})"
    if left < 0 or top < 0 or left + w > hw[1] or top + h > hw[0] or w <= 0 or h <= 0:
        return f"mask box {left},{top} {w}x{h} is not inside the {hw[1]}x{hw[0]} image"
    if isinstance(counts, str):
        # pycocotools trusts the string and writes past its buffer on bad counts: read them
        # first (its rleFrString format) and hand it only strings that fill the image.
        counts = compressed_counts(counts)
        if counts is None:
            return "bad compressed RLE string"
    total = sum(counts)
    if total != h * w or any(c < 0 for c in counts):
        return f"RLE counts sum to {total}, not {w}x{h} = {h * w} pixels"
    return None


def compressed_counts(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (6 bits a character, from '0', each
    count after the second stored as the difference to the one two before); None if bad."""
    counts: list[int] = []
    value = shift = 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            return None
        counts.append(value)
        value = shift = 0
    return counts if shift == 0 else None


def shape_pixels(shape: Shape, hw: tuple[int, int], line_width: int,
                 point_size: int) -> tuple[int, int, np.ndarray]:
    """One shape's pixels as ``(top, left, bool box)`` (see :mod:`.draw` for the rules)."""
    h, w = hw
    if shape.kind == "rle":
        counts, rh, rw, order, left, top = shape.rle
        if isinstance(counts, str):
            try:
                part = draw.coco_compressed_rle_mask(counts, rh, rw)
            except ImportError:
                raise DataError(f"{shape.where}: compressed RLE needs pycocotools: "
                                f"{EXTRA_HINT}") from None
        else:
            part = draw.rle_counts_mask(counts, rh, rw, order)
        return top, left, part
    if shape.kind == "coco_polygon" and len(shape.parts) == 1:
        return draw.coco_polygon_box(shape.parts[0].ravel(), h, w)
    out = np.zeros(hw, dtype=bool)
    for part in shape.parts:  # COCO polygons in several parts; CVAT <points>: a disc each
        if shape.kind == "coco_polygon":
            out |= draw.coco_polygon_mask(part.ravel(), h, w)
        else:
            out |= draw.pil_mask(h, w, shape.kind, part, line_width, point_size)
    return 0, 0, out


def rasterise(spec: DatasetSpec, record: Record, image: Path, hw: tuple[int, int]) -> np.ndarray:
    """An image's shapes -> ``(H, W)`` int64 class indices, ``ignore_index`` where ignored.

    Raises:
        DataError: the first problem :func:`record_problems` finds (one line, naming the
            annotation file and the shape).
    """
    problems = record_problems(spec, record, image, hw)
    if problems:
        raise DataError(problems[0])
    mask = np.zeros(hw, dtype=np.int64)
    order = sorted(range(len(record.shapes)), key=lambda i: record.shapes[i].z)  # stable
    for i in order:
        shape = record.shapes[i]
        try:
            top, left, pixels = shape_pixels(shape, hw, spec.mask.line_width,
                                             spec.mask.point_size)
        except DataError as e:
            raise DataError(f"{record.source}: {e}") from None
        except (ValueError, OverflowError) as e:  # what the checks above did not foresee
            raise DataError(shape_error(record, shape, f"cannot be drawn ({e})")) from None
        mask[top:top + pixels.shape[0], left:left + pixels.shape[1]][pixels] = \
            shape_value(spec, shape)
    return mask


def match(records: dict[str, list[Record]], image: Path) -> Record | None:
    """The record whose file name is ``image``'s path or a tail of it (``a.png``,
    ``images/a.png``); with several, the one matching the most folders."""
    best, depth = None, -1
    for record in records.get(image.name, []):
        parts = PurePosixPath(record.name.replace("\\", "/")).parts
        n = len(parts)
        if tuple(image.parts[-n:]) == parts and n > depth:
            best, depth = record, n
    return best


def by_file_name(records: list[Record]) -> dict[str, list[Record]]:
    """Records indexed by their file name's last part (for :func:`match`)."""
    index: dict[str, list[Record]] = {}
    for r in records:
        index.setdefault(PurePosixPath(r.name.replace("\\", "/")).name, []).append(r)
    return index


def load_split_file(path: str | os.PathLike,
                    parse: Callable[[Path], dict[str, list[Record]]]) -> dict[str, list[Record]]:
    """``parse(path)``, kept per process by path, size and modification time: a split's
    COCO or CVAT file is read once, not once per image (an edited file is read again).

    Raises:
        DataError: the file is missing (or whatever ``parse`` raises).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: annotation file not found") from None
    return _parsed(parse, str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _parsed(parse, path: str, mtime_ns: int, size: int) -> dict[str, list[Record]]:
    return parse(Path(path))
