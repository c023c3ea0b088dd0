"""Class masks -> polygons that the annotation tools draw back into the same mask.

Every 4-connected region of a class becomes its outer boundary (holes filled). Drawn in
order of decreasing filled area, later shapes over earlier ones, the regions rebuild the mask:
a region inside another region's hole has a smaller filled area, so it is drawn after it.
Regions are 4-connected (a hole 8-connected) so that two classes meeting corner to corner
never both claim the corner. The first class is the canvas a reader starts from: its regions
are written only where they are enclosed, never the open background.

Boundaries are traced along the pixel edges (cracks), keeping the region on the right. The
same walk gives two polygons:

- ``"crack"``: the pixel-corner polygon. Every pixel centre of the region is 0.5 px inside
  it and every other centre 0.5 px outside, so COCO's rule (pixel in when its centre is
  inside, :mod:`.draw`) gives the region back exactly.
- ``"centre"``: the chain of the region's boundary pixel centres. Pillow's
  ``polygon(outline=1, fill=1)`` (LabelMe's rule) draws the chain's pixels and fills the
  centres inside it, which again is exactly the region.

Then :func:`simplify` (Douglas-Peucker) drops vertices within ``tolerance`` px of the
simplified outline; only pixels that close to the boundary can change.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)
# Directions as (dx, dy) in image coordinates (y down), turning right = clockwise on screen.
DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _inside(region: np.ndarray, x: int, y: int) -> bool:
    h, w = region.shape
    return 0 <= x < w and 0 <= y < h and bool(region[y, x])


def _ahead(x: int, y: int, d: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The pixels ahead-left and ahead-right of corner (x, y) moving in direction d."""
    # The pixel whose top-left corner is (x, y) is (x, y); the four around the corner are
    # (x-1, y-1), (x, y-1), (x-1, y), (x, y).
    if d == 0:  # moving +x: ahead pixels are column x, rows y-1 (left) and y (right)
        return (x, y - 1), (x, y)
    if d == 1:  # moving +y: column x (left) and x-1 (right), row y
        return (x, y), (x - 1, y)
    if d == 2:  # moving -x: column x-1, rows y (left) and y-1 (right)
        return (x - 1, y), (x - 1, y - 1)
    return (x - 1, y - 1), (x, y - 1)  # moving -y


def trace(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outer boundary of a one-region mask, walked clockwise from its first pixel.

    Args:
        region: ``(H, W)`` bool, one 8-connected region (holes may be filled or not).

    Returns:
        ``(corners, centres)``: ``(N, 2)`` float x, y pixel-corner vertices (every turn), and
        ``(M, 2)`` x, y pixel centres of the boundary pixels in walking order.
    """
    ys, xs = np.nonzero(region)
    y0 = int(ys.min())
    x0 = int(xs[ys == y0].min())
    x, y, d = x0, y0, 0  # the top edge of the first pixel, walking right; region below = right
    corners, centres = [], []
    while True:
        right_pixel = _right_of(x, y, d)
        if not centres or centres[-1] != right_pixel:
            centres.append(right_pixel)
        x, y = x + DIRS[d][0], y + DIRS[d][1]
        left, right = _ahead(x, y, d)
        if not _inside(region, *right):
            nd = (d + 1) % 4  # 4-connected: a diagonal neighbour is another region
        elif _inside(region, *left):
            nd = (d - 1) % 4
        else:
            nd = d
        if nd != d:
            corners.append((x, y))
        d = nd
        if (x, y, d) == (x0, y0, 0):
            break
    if len(centres) > 1 and centres[-1] == centres[0]:
        centres.pop()
    return np.asarray(corners, dtype=np.float64), np.asarray(centres, dtype=np.float64)


def _right_of(x: int, y: int, d: int) -> tuple[int, int]:
    """The pixel on the right of the edge leaving corner (x, y) in direction d."""
    return ((x, y), (x - 1, y), (x - 1, y - 1), (x, y - 1))[d]


def simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed polygon: drop vertices within ``tolerance`` px."""
    n = len(points)
    if tolerance <= 0 or n <= 4:
        return points
    # Split the ring at its first vertex and the vertex farthest from it.
    far = int(np.argmax(((points - points[0]) ** 2).sum(axis=1)))
    keep = np.zeros(n, dtype=bool)
    keep[[0, far]] = True
    ring = np.vstack([points, points[:1]])
    stack = [(0, far), (far, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        p, q = ring[a], ring[b]
        seg = ring[a + 1:b]
        dx, dy = q - p
        length = np.hypot(dx, dy)
        if length == 0:
            dist = np.hypot(*(seg - p).T)
        else:
            dist = np.abs(dx * (seg[:, 1] - p[1]) - dy * (seg[:, 0] - p[0])) / length
        i = int(np.argmax(dist))
        if dist[i] > tolerance:
            m = a + 1 + i
            keep[m % n] = True
            stack += [(a, m), (m, b)]
    out = points[keep]
    return out if len(out) >= 3 else points


def class_polygons(mask: np.ndarray, num_classes: int, kind: str,
                   tolerance: float = 0.0) -> list[tuple[int, np.ndarray]]:
    """``(class, (N, 2) x, y polygon)`` for every region of ``mask``, in drawing order.

    Args:
        mask: ``(H, W)`` class indices; values outside ``0..num_classes - 1`` are skipped.
        kind: ``"crack"`` (COCO) or ``"centre"`` (LabelMe), see the module docstring.
        tolerance: simplification in px (0 keeps every turn).
    """
    regions = []
    for cls in range(num_classes):
        pixels = mask == cls if cls else _enclosed(mask == 0)
        labels, _ = ndimage.label(pixels)
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[box] == i
            filled = ndimage.binary_fill_holes(region, structure=EIGHT)
            regions.append((int(filled.sum()), cls, box, region))
    regions.sort(key=lambda r: -r[0])
    out = []
    for _, cls, box, region in regions:
        corners, centres = trace(np.pad(region, 1))
        poly = (corners if kind == "crack" else centres) - 1  # undo the pad
        poly = poly + [box[1].start, box[0].start]
        poly = simplify(poly, tolerance)
        if len(poly) < 3:  # one pixel or a 2-pixel line: the tools want 3 points
            poly = np.vstack([poly, poly[-1:], poly[-1:]])[:3]
        out.append((cls, poly))
    return out


def _enclosed(canvas: np.ndarray) -> np.ndarray:
    """Canvas pixels that other regions enclose: not 8-connected to the image border (the
    holes that :func:`scipy.ndimage.binary_fill_holes` fills in the other regions)."""
    return ndimage.binary_fill_holes(~canvas, structure=EIGHT) & canvas
