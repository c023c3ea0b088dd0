"""Shapes to pixels, each exactly as the tool that made it draws it.

Two rules, cited so that a mask here is the mask the tool shows:

- **PIL rule** (LabelMe): ``labelme.utils.shape_to_mask`` draws with Pillow's ImageDraw:
  ``polygon(outline=1, fill=1)``, ``rectangle(outline=1, fill=1)`` from its two corners,
  a circle as ``ellipse`` of radius ``|centre - point|``, ``line`` / ``linestrip`` as
  ``line(width=line_width)`` (default 10) and a point as a filled circle of radius
  ``point_size`` (default 5). Pixel (x, y)'s centre is the point (x, y). We call Pillow the
  same way, so the pixels are Pillow's own.
- **COCO rule** (COCO polygons, and CVAT polygons and boxes, which CVAT's exporter rasterises
  through pycocotools too): pycocotools' ``rleFrPoly`` (cocoapi ``common/maskApi.c``) walks each
  edge on a 5x finer grid, keeps the crossings of the lines x = column (pixel centres at
  x + 0.5 in COCO coordinates) and toggles the column from the rounded crossing down.
  :func:`coco_polygon_mask` re-implements that walk in numpy, rounding as its C casts do;
  ``tests/test_annotations_draw.py`` compares it with pycocotools pixel for pixel. A pixel is
  in when its centre is inside the polygon, up to that 1/5 px grid.

RLE: COCO's counts run down the columns (Fortran order), starting with zeros; compressed
counts (a string) are decoded by pycocotools, the optional extra ``pixelwise[annotations]``.
CVAT's mask ``rle`` runs along the rows of its ``left, top, width, height`` box, also
starting with zeros.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from PIL import Image, ImageDraw

SCALE = 5  # rleFrPoly's sub-pixel grid


def _trunc(a: np.ndarray) -> np.ndarray:
    """C's (int) cast: toward zero."""
    return np.trunc(a).astype(np.int64)


def _boundary_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer points rleFrPoly puts on every edge of the 5x grid, edge after edge.

    Each edge walks its longer axis one step at a time from the endpoint with the smaller
    coordinate on that axis (rounding the other axis from there), listed in the edge's
    own direction, as the C loop does.
    """
    x1, y1 = np.append(x[1:], x[0]), np.append(y[1:], y[0])  # each edge's end
    dx, dy = np.abs(x1 - x), np.abs(y1 - y)
    along_x = dx >= dy
    flip = (along_x & (x > x1)) | (~along_x & (y > y1))
    xs, xe = np.where(flip, x1, x), np.where(flip, x, x1)
    ys, ye = np.where(flip, y1, y), np.where(flip, y, y1)
    n = np.maximum(dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):  # n == 0: one point, slope unused
        slope = np.where(along_x, (ye - ys) / dx, (xe - xs) / dy)
    slope = np.where(n == 0, 0.0, slope)
    edge = np.repeat(np.arange(len(x)), n + 1)
    step = np.arange(len(edge)) - np.repeat(np.cumsum(n + 1) - (n + 1), n + 1)
    t = np.where(flip[edge], n[edge] - step, step)
    e_x, e_s = along_x[edge], slope[edge]
    u = np.where(e_x, t + xs[edge], _trunc(xs[edge] + e_s * t + 0.5))
    v = np.where(e_x, _trunc(ys[edge] + e_s * t + 0.5), t + ys[edge])
    return u, v


def coco_polygon_mask(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """One COCO polygon ``[x0, y0, x1, y1, ...]`` -> ``(H, W)`` bool, as pycocotools draws it."""
    out = np.zeros((height, width), dtype=bool)
    top, left, inside = coco_polygon_box(xy, height, width)
    out[top:top + inside.shape[0], left:left + inside.shape[1]] = inside
    return out


def coco_polygon_box(xy: np.ndarray, height: int, width: int) -> tuple[int, int, np.ndarray]:
    """:func:`coco_polygon_mask` as ``(top, left, pixels)`` of its bounding box (cheaper to
    paint than a full-image mask per polygon)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    u, v = _boundary_points(_trunc(SCALE * xy[:, 0] + 0.5), _trunc(SCALE * xy[:, 1] + 0.5))
    change = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = (np.minimum(u[change], u[change - 1]) + 0.5) / SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = (np.minimum(v[change], v[change - 1]) + 0.5) / SCALE - 0.5
    cols = xd[keep].astype(np.int64)
    rows = np.ceil(np.clip(yd[keep], 0, height)).astype(np.int64)
    if cols.size == 0 or rows.min() == rows.max():
        return 0, 0, np.zeros((0, 0), dtype=bool)
    # Each crossing toggles every pixel after it in column-major order (rows 0..height,
    # height meaning the next column's top). A closed polygon crosses each column line an
    # even number of times, so the toggles pair up within columns and only the box of the
    # crossings needs the running parity.
    c0, r0, r1 = int(cols.min()), int(rows.min()), int(rows.max())
    box_h, box_w = r1 - r0, int(cols.max()) - c0 + 1
    toggles = np.bincount((cols - c0) * box_h + rows - r0, minlength=box_w * box_h + 1)
    inside = (np.cumsum(toggles[:-1]) % 2).astype(bool).reshape(box_w, box_h).T
    return r0, c0, inside


def coco_box_polygon(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A box as the polygon pycocotools' ``rleFrBbox`` (and CVAT's exporter) draws."""
    return np.array([x0, y0, x0, y1, x1, y1, x1, y0], dtype=np.float64)


def rle_counts_mask(counts, height: int, width: int, order: str) -> np.ndarray:
    """Uncompressed run lengths (zeros first) -> ``(height, width)`` bool.

    ``order="F"``: runs down the columns (COCO); ``"C"``: along the rows (CVAT).

    Raises:
        ValueError: negative counts, or counts that do not sum to ``height * width``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("RLE counts must be a list of non-negative integers")
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {height}x{width} = "
                         f"{height * width} pixels")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T if order == "F" else flat.reshape(height, width)


def coco_compressed_rle_mask(counts: str, height: int, width: int) -> np.ndarray:
    """COCO's compressed RLE string -> ``(H, W)`` bool, decoded by pycocotools."""
    from pycocotools import mask as coco_mask  # optional extra: callers name it on ImportError

    rle = {"size": [height, width], "counts": counts.encode("ascii")}
    with warnings.catch_warnings():  # pycocotools 2.0.x's numpy 2 copy-keyword notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)


def pil_mask(height: int, width: int, kind: str, points: np.ndarray, line_width: int = 10,
             point_size: int = 5) -> np.ndarray:
    """One LabelMe shape -> ``(H, W)`` bool, drawn as ``labelme.utils.shape_to_mask`` draws it.

    ``kind``: polygon, rectangle, circle, line, linestrip or point; ``points`` ``(N, 2)`` x, y.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [(float(px), float(py)) for px, py in points]
    if kind == "circle":
        (cx, cy), (px, py) = xy
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "rectangle":
        (ax, ay), (bx, by) = xy
        # LabelMe keeps the corners in drag order; Pillow >= 9 wants them sorted (same box).
        draw.rectangle([min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)], outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        draw.line(xy, fill=1, width=line_width)
    elif kind == "point":
        (cx, cy), r = xy[0], point_size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)
