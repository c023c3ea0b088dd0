"""Connected-component post-processing of label maps, chosen on validation predictions.

The idea is nnU-Net's (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021): an object that is one
piece in every image (a polyp, an organ) loses Dice to stray specks, so per foreground class
try "keep only the largest connected component" and "remove components under N pixels",
and keep an operation only where it raises that class's Dice on held-out predictions.

Conventions, stated once:

- Connectivity is full (8-neighbours in 2-D, ``ndimage.generate_binary_structure(2, 2)``),
  as nnU-Net's: two pixels touching at a corner are one object, so a thin diagonal vessel
  or boundary is not cut into specks that the size rule would then delete.
- Removed pixels become the background class 0; for a binary model the foreground is
  class 1. Classes absent from the spec are untouched. Each class is processed on its own
  mask, so the result does not depend on the order of the classes.
- ``largest`` keeps one component per image; ties go to the component scipy labels first
  (the first in row-major order). A class absent from an image stays absent.
- ``min_size`` N removes components of fewer than N pixels (N = 1 removes nothing).

The spec is a JSON-able dict stored in a checkpoint (key ``"postprocess"``) and in a fold
run's ``crossval.json``::

    {"classes": {"1": {"op": "largest"}, "3": {"op": "min_size", "min_size": 40}},
     "report": {...}}            # optional: what choose_postprocessing measured

Only numpy and scipy.ndimage: it runs on label maps after the model, on any backend.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from scipy import ndimage

# Full connectivity (see the module docstring).
STRUCTURE = ndimage.generate_binary_structure(2, 2)
OPS = ("largest", "min_size")
# min_size candidates, from the sizes of the class's predicted components: for each fraction
# p, the N that removes the smallest components holding together at most p of the predicted
# pixels. Weighting by pixels rather than counting components keeps a swarm of one-pixel
# specks from pulling every candidate down to N = 2.
PIXEL_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
# A gain must exceed float noise to count as "raises Dice".
MIN_GAIN = 1e-9


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels (0 = outside the mask) and the size of components 1..n (index 0
    of the sizes is the component 1)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    comp, n = ndimage.label(mask.astype(bool, copy=False), structure=STRUCTURE)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    return comp, sizes


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Only the largest connected component of a boolean mask (full connectivity).

    Args:
        mask: ``(H, W)`` boolean (or 0/1) mask.

    Returns:
        ``(H, W)`` bool; all False when ``mask`` is empty. Ties keep the first component in
        row-major order.
    """
    comp, sizes = _components(mask)
    if sizes.size == 0:
        return np.zeros(mask.shape, dtype=bool)
    return comp == int(np.argmax(sizes)) + 1


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """The mask without its connected components of fewer than ``min_size`` pixels.

    Returns:
        ``(H, W)`` bool.
    """
    comp, sizes = _components(mask)
    keep = np.concatenate([[False], sizes >= int(min_size)])
    return keep[comp]


def check_postprocessing(spec: Any, num_classes: int) -> None:
    """The spec has the documented shape and names foreground classes of a model with
    ``num_classes`` classes (2 for a binary model).

    Raises:
        ValueError: naming the offending key.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("classes"), dict):
        raise ValueError("'postprocess' must be a dict with a 'classes' mapping")
    top = max(int(num_classes), 2)  # a one-name sigmoid model still has class 1
    for key, op in spec["classes"].items():
        where = f"'postprocess.classes.{key}'"
        if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) < top):
            raise ValueError(f"{where}: class must be a foreground index 1..{top - 1}")
        if not isinstance(op, dict) or op.get("op") not in OPS:
            raise ValueError(f"{where}: 'op' must be one of {', '.join(OPS)}")
        n = op.get("min_size")
        if op["op"] == "min_size" and not (isinstance(n, int) and not isinstance(n, bool)
                                           and n >= 1):
            raise ValueError(f"{where}: 'min_size' must be an integer >= 1")


def apply_postprocessing(labels: np.ndarray, spec: dict | None) -> np.ndarray:
    """Apply a post-processing spec to one label map.

    Args:
        labels: ``(H, W)`` integer class indices.
        spec: ``{"classes": {"<c>": {"op": "largest"} | {"op": "min_size", "min_size": N}}}``
            or None (no change). Other keys ("report") are ignored.

    Returns:
        A new ``(H, W)`` array of ``labels``' dtype; removed pixels are 0 (background).
    """
    out = np.array(labels, copy=True)
    if not spec or not spec.get("classes"):
        return out
    for key, op in spec["classes"].items():
        mask = labels == int(key)
        if op["op"] == "largest":
            kept = keep_largest_component(mask)
        else:
            kept = remove_small_components(mask, op["min_size"])
        out[mask & ~kept] = 0
    return out


class _ClassStats:
    """What choosing needs of one class, accumulated image by image without keeping images.

    Dice is ``2 TP / (P + T)`` pooled over all images (ignored pixels excluded, as in
    metrics/confusion.py). Removing a predicted component subtracts its counted pixels from
    P and its correct ones from TP, so every candidate is scored exactly from per-component
    counts: ``size`` (all pixels, what the size rule sees at inference), ``counted`` (pixels
    whose target is not ignored) and ``hit`` (pixels whose target is the class).
    """

    def __init__(self) -> None:
        self.tp = self.pred = self.true = 0
        self.size: list[np.ndarray] = []
        self.counted: list[np.ndarray] = []
        self.hit: list[np.ndarray] = []

    def add(self, pred_mask: np.ndarray, true_mask: np.ndarray, valid: np.ndarray) -> None:
        comp, sizes = _components(pred_mask)
        n = sizes.size
        counted = np.bincount(comp[valid], minlength=n + 1)[1:]
        hit = np.bincount(comp[true_mask], minlength=n + 1)[1:]
        self.tp += int(hit.sum())
        self.pred += int(counted.sum())
        self.true += int(true_mask.sum())
        self.size.append(sizes)
        self.counted.append(counted)
        self.hit.append(hit)

    def dice(self, removed_counted: int = 0, removed_hit: int = 0) -> float | None:
        den = self.pred - removed_counted + self.true
        return None if den == 0 else 2.0 * (self.tp - removed_hit) / den

    def dice_largest(self) -> float | None:
        removed_c = removed_h = 0
        for sizes, counted, hit in zip(self.size, self.counted, self.hit):
            if sizes.size > 1:
                drop = np.ones(sizes.size, dtype=bool)
                drop[int(np.argmax(sizes))] = False
                removed_c += int(counted[drop].sum())
                removed_h += int(hit[drop].sum())
        return self.dice(removed_c, removed_h)

    def dice_min_size(self, n: int) -> float | None:
        if not self.size:
            return self.dice()
        drop = np.concatenate(self.size) < n
        return self.dice(int(np.concatenate(self.counted)[drop].sum()),
                         int(np.concatenate(self.hit)[drop].sum()))

    def size_candidates(self) -> list[int]:
        """N candidates from the predicted component sizes (see PIXEL_FRACTIONS): N is the
        size of the first component (smallest first) past the fraction, so ``size < N``
        removes the ones before it; an N that would remove nothing is left out."""
        sizes = np.sort(np.concatenate(self.size)) if self.size else np.zeros(0, np.int64)
        if sizes.size == 0:
            return []
        share = np.cumsum(sizes) / sizes.sum()
        ends = np.searchsorted(share, PIXEL_FRACTIONS, side="right")
        return sorted({int(sizes[j]) for j in ends if j < sizes.size and sizes[j] > sizes[0]})


def _choose_for_class(stats: _ClassStats) -> dict[str, Any]:
    """Score every candidate of one class; choose the best only if it raises Dice.

    Among equal scores the gentlest wins: "largest" first, then the smallest N.
    """
    before = stats.dice()
    entry: dict[str, Any] = {"dice": before, "largest": stats.dice_largest(),
                             "min_size": {str(n): stats.dice_min_size(n)
                                          for n in stats.size_candidates()},
                             "chosen": None, "gain": None}
    if before is None:  # class absent from truth and prediction: nothing to measure
        return entry
    options = [({"op": "largest"}, entry["largest"])]
    options += [({"op": "min_size", "min_size": int(n)}, d) for n, d in entry["min_size"].items()]
    best_op, best = max(options, key=lambda o: o[1])  # max keeps the first of equal scores
    entry["gain"] = best - before
    if entry["gain"] > MIN_GAIN:
        entry["chosen"] = best_op
    return entry


def choose_postprocessing(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int,
                          ignore_index: int = 255,
                          class_names: list[str] | None = None) -> dict[str, Any]:
    """Choose per foreground class the post-processing that raises its pooled Dice.

    Args:
        pairs: ``(pred_labels, target)`` ``(H, W)`` integer arrays, one per image; read once,
            so a generator keeps one image in memory (per-component counts are all kept).
        num_classes: classes of the model (2 for a binary model: foreground is class 1).
        ignore_index: target value excluded from Dice (its pixels still count in a
            component's size, as they would at inference).
        class_names: optional, copied into the report.

    Returns:
        ``{"classes": {"<c>": op, ...}, "report": {"<c>": {"name"?, "dice": before,
        "largest": dice, "min_size": {"<N>": dice}, "chosen": op | None, "gain": d}}}``.
        ``gain`` is the best candidate's Dice minus ``dice`` (<= 0 when nothing is chosen;
        None for a class absent from truth and prediction, whose Dice is 0/0).
        Candidates: "largest", and "min_size" with the N that remove the smallest predicted
        components of the class holding up to 1, 2, 5, 10 or 20% of its predicted pixels
        (PIXEL_FRACTIONS). An op is chosen only if it strictly raises
        Dice, so an empty ``classes`` means "leave the predictions alone".
    """
    top = max(int(num_classes), 2)
    stats = {c: _ClassStats() for c in range(1, top)}
    for pred, target in pairs:
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} must be one "
                             f"(H, W) shape")
        valid = target != ignore_index
        for c, s in stats.items():
            s.add(pred == c, target == c, valid)
    classes: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for c, s in stats.items():
        entry = _choose_for_class(s)
        if class_names is not None and c < len(class_names):
            entry = {"name": class_names[c], **entry}
        report[str(c)] = entry
        if entry["chosen"] is not None:
            classes[str(c)] = entry["chosen"]
    return {"classes": classes, "report": report}


def describe_postprocessing(spec: dict | None) -> list[str]:
    """One line per class of a chosen spec's report: the op kept (or none) and Dice before
    and after, e.g. ``class 1 (vessel): largest component kept, Dice 0.7012 -> 0.7105``."""
    lines = []
    for key, entry in ((spec or {}).get("report") or {}).items():
        name = f"class {key}" + (f" ({entry['name']})" if entry.get("name") else "")
        op, before, gain = entry["chosen"], entry["dice"], entry["gain"]
        if before is None:
            lines.append(f"{name}: absent from truth and prediction, nothing chosen")
        elif op is None:
            lines.append(f"{name}: nothing kept (best candidate {gain:+.4f} Dice), "
                         f"Dice {before:.4f}")
        else:
            what = ("largest component" if op["op"] == "largest"
                    else f"components under {op['min_size']} px removed")
            lines.append(f"{name}: {what}, Dice {before:.4f} -> {before + gain:.4f}")
    return lines
