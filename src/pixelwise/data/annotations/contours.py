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
# Walking directions as (dx, dy) in image coordinates (y down): +x, +y, -x, -y; d + 1 turns
# right (clockwise on screen). Pixel (x, y) has its top-left corner at (x, y). For a walker on
# corner (x, y) heading d: the pixel on the right of the edge it leaves, and the pixels
# ahead-left and ahead-right of it, as offsets from the corner.
DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))
RIGHT_OF_EDGE = ((0, 0), (-1, 0), (-1, -1), (0, -1))
AHEAD_LEFT = ((0, -1), (0, 0), (-1, 0), (-1, -1))
AHEAD_RIGHT = ((0, 0), (-1, 0), (-1, -1), (0, -1))


def trace(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outer boundary of a 4-connected region, walked clockwise from its first pixel.

    Args:
        region: ``(H, W)`` bool, one 4-connected region (holes may be filled or not).

    Returns:
        ``(corners, centres)``: ``(N, 2)`` float x, y pixel-corner vertices (every turn), and
        ``(M, 2)`` x, y pixel centres of the boundary pixels in walking order.
    """
    # A blank border keeps the walk inside the array; lists index faster than numpy here.
    rows = np.pad(region, 1).tolist()
    y0 = int(np.argmax(region.any(axis=1)))
    x0 = int(np.argmax(region[y0]))
    x, y, d = x0 + 1, y0 + 1, 0  # the first pixel's top edge, walking right: region on the right
    start = (x, y, d)
    corners, centres = [], []
    while True:
        ox, oy = RIGHT_OF_EDGE[d]
        pixel = (x + ox - 1, y + oy - 1)
        if not centres or centres[-1] != pixel:
            centres.append(pixel)
        x, y = x + DIRS[d][0], y + DIRS[d][1]
        (lx, ly), (rx, ry) = AHEAD_LEFT[d], AHEAD_RIGHT[d]
        if not rows[y + ry][x + rx]:
            turn = 1  # 4-connected: a diagonal neighbour belongs to another region
        elif rows[y + ly][x + lx]:
            turn = -1
        else:
            turn = 0
        if turn:
            d = (d + turn) % 4
            corners.append((x - 1, y - 1))
        if (x, y, d) == start:
            break
    if len(centres) > 1 and centres[-1] == centres[0]:
        centres.pop()
    return np.asarray(corners, dtype=np.float64), np.asarray(centres, dtype=np.float64)


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
        corners, centres = trace(region)
        poly = (corners if kind == "crack" else centres) + [box[1].start, box[0].start]
        poly = simplify(poly, tolerance)
        if len(poly) < 3:  # one pixel or a 2-pixel line: the tools want 3 points
            poly = np.vstack([poly, poly[-1:], poly[-1:]])[:3]
        out.append((cls, poly))
    return out


def _enclosed(canvas: np.ndarray) -> np.ndarray:
    """Canvas pixels that other regions enclose: not 8-connected to the image border (the
    holes that :func:`scipy.ndimage.binary_fill_holes` fills in the other regions)."""
    return ndimage.binary_fill_holes(~canvas, structure=EIGHT) & canvas
