"""Confusion-matrix metrics: the four of the FCN paper and per-class scores.

Notation (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, section 5): ``n_ij`` is the number of pixels of class ``i``
(ground truth, the matrix row) predicted as class ``j`` (column); ``t_i = sum_j n_ij`` the
pixels of class ``i``; ``p_j = sum_i n_ij`` the pixels predicted as ``j``.

- pixel accuracy  ``sum_i n_ii / sum_i t_i``
- mean accuracy   ``(1/n_cl) sum_i n_ii / t_i``
- mean IoU        ``(1/n_cl) sum_i n_ii / (t_i + p_i - n_ii)``
- fw IoU          ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + p_i - n_ii)``

Undefined values (the 0/0 rule): every per-class score is a ratio, and when its denominator
is 0 the score is undefined and reported as ``None`` (JSON ``null``); means are taken over
the defined entries only (``n_cl`` counts those). Hence a class absent from both truth and
prediction has every per-class value ``None`` and is excluded from every mean. A class that
is predicted but absent from the truth has IoU 0, Dice 0, precision 0 and recall/accuracy
``None`` (so it lowers mean IoU and Dice but not mean accuracy, exactly as ``nanmean`` in the
FCN reference code); a class present but never predicted has precision ``None`` and IoU,
Dice and recall 0. A mean with no defined entry (an empty matrix) is ``None``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

PerClass = list  # list[float | None], one entry per class


def _as_float64(mat: torch.Tensor) -> torch.Tensor:
    if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(mat.shape)}")
    return torch.as_tensor(mat).detach().to("cpu", torch.float64)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> PerClass:
    """Element-wise ``num / den`` as a list, with ``None`` where ``den == 0``."""
    return [None if d == 0 else float(n / d) for n, d in zip(num.tolist(), den.tolist())]


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (the 0/0 rule above); ``None`` if none is."""
    defined = [float(v) for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def per_class_iou(mat: torch.Tensor) -> PerClass:
    """IoU (Jaccard) of each class: ``n_ii / (t_i + p_i - n_ii)``; None where 0/0."""
    m = _as_float64(mat)
    tp = m.diag()
    return _ratio(tp, m.sum(1) + m.sum(0) - tp)


def per_class_dice(mat: torch.Tensor) -> PerClass:
    """Dice / F1 of each class: ``2 n_ii / (t_i + p_i)``; None where 0/0."""
    m = _as_float64(mat)
    return _ratio(2.0 * m.diag(), m.sum(1) + m.sum(0))


def per_class_precision(mat: torch.Tensor) -> PerClass:
    """Precision of each class: ``n_ii / p_i``; None for a class never predicted."""
    m = _as_float64(mat)
    return _ratio(m.diag(), m.sum(0))


def per_class_recall(mat: torch.Tensor) -> PerClass:
    """Recall (= per-class accuracy) of each class: ``n_ii / t_i``; None for a class absent
    from the ground truth."""
    m = _as_float64(mat)
    return _ratio(m.diag(), m.sum(1))


per_class_accuracy = per_class_recall


def pixel_accuracy(mat: torch.Tensor) -> float | None:
    """``sum_i n_ii / sum_i t_i``; None for an empty matrix."""
    m = _as_float64(mat)
    total = float(m.sum())
    return float(m.diag().sum()) / total if total > 0 else None


def mean_accuracy(mat: torch.Tensor) -> float | None:
    """Mean of the per-class accuracies over classes present in the ground truth."""
    return mean_defined(per_class_recall(mat))


def mean_iou(mat: torch.Tensor) -> float | None:
    """Mean of the per-class IoUs over classes present in truth or prediction."""
    return mean_defined(per_class_iou(mat))


def mean_dice(mat: torch.Tensor) -> float | None:
    """Mean of the per-class Dice scores over classes present in truth or prediction."""
    return mean_defined(per_class_dice(mat))


def fw_iou(mat: torch.Tensor) -> float | None:
    """Frequency-weighted IoU ``(sum_k t_k)^-1 sum_i t_i IoU_i``; None for an empty matrix.

    Classes absent from the truth have weight ``t_i = 0`` and drop out.
    """
    m = _as_float64(mat)
    total = float(m.sum())
    if total == 0:
        return None
    t = m.sum(1).tolist()
    return sum(ti * iou for ti, iou in zip(t, per_class_iou(mat)) if ti > 0) / total


def compute_metrics(mat: torch.Tensor) -> dict:
    """All metrics of a confusion matrix (rows = truth), as plain Python values.

    Returns:
        dict with pixel_accuracy, mean_accuracy, mean_iou, fw_iou, dice (mean), and the
        lists per_class_iou, per_class_dice, per_class_precision, per_class_recall,
        per_class_accuracy (``None`` entries follow the 0/0 rule of the module docstring).
    """
    return {
        "pixel_accuracy": pixel_accuracy(mat),
        "mean_accuracy": mean_accuracy(mat),
        "mean_iou": mean_iou(mat),
        "fw_iou": fw_iou(mat),
        "dice": mean_dice(mat),
        "per_class_iou": per_class_iou(mat),
        "per_class_dice": per_class_dice(mat),
        "per_class_precision": per_class_precision(mat),
        "per_class_recall": per_class_recall(mat),
        "per_class_accuracy": per_class_accuracy(mat),
    }


class ConfusionMatrix:
    """A ``C x C`` confusion matrix (rows = ground truth, columns = prediction) kept on a device.

    ``update`` adds a batch with one scatter-add (a bincount) and never leaves the device,
    so it can run after every step without syncing; ``all_reduce`` sums the matrices of all
    processes once per evaluation; ``compute`` returns the metrics (see the module docstring
    for the 0/0 rule: a class absent from truth and prediction is ``None`` and excluded from
    the means).

    Args:
        num_classes: number of classes ``C`` (2 for a one-channel binary model).
        ignore_index: target value whose pixels are skipped.
        device: where the matrix lives (that of the batches); default CPU.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(logits.argmax(1), target)
        >>> cm.all_reduce(); cm.compute()["mean_iou"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        # Flat counts with one extra bin that collects skipped pixels; ``mat`` is a view.
        self._counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The ``(C, C)`` int64 matrix; ``mat[i, j]`` = pixels of class ``i`` predicted ``j``."""
        c = self.num_classes
        return self._counts[:c * c].view(c, c)

    def reset(self) -> None:
        """Zero the matrix (start of an evaluation)."""
        self._counts.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: predicted classes (e.g. ``logits.argmax(1)``, or ``(sigmoid > 0.5)`` for a
                binary model), any integer dtype.
            target: ground truth; pixels equal to ``ignore_index`` are skipped.

        Shape:
            pred and target ``(N, H, W)`` (any equal shapes work).

        Pixels whose target or prediction lies outside ``[0, C)`` are dropped like ignored
        ones: raising instead would need a device sync on every batch; datasets are expected
        to map unknown labels to ``ignore_index`` upstream.

        Raises:
            ValueError: pred and target of different shapes.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        c = self.num_classes
        t = target.to(self._counts.device).reshape(-1).long()
        p = pred.to(self._counts.device).reshape(-1).long()
        keep = (t != self.ignore_index) & (t >= 0) & (t < c) & (p >= 0) & (p < c)
        # Skipped pixels go to the spare bin instead of being masked out: boolean indexing,
        # like torch.bincount, makes a GPU wait for the host. A 1-D scatter_add_ stays on
        # the device, is deterministic under torch.use_deterministic_algorithms, and was
        # 50x faster than bincount on the project's CPU (0.26 ms vs 12.7 ms, 345k pixels).
        idx = torch.where(keep, t * c + p, torch.full_like(t, c * c))
        self._counts.scatter_add_(0, idx, torch.ones_like(idx))

    def all_reduce(self) -> None:
        """Sum the matrix over all torch.distributed processes (no-op when not initialised).

        Call it once per evaluation, after the last ``update`` and before ``compute``:
        a second call would add the already-summed matrices again.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """The metrics of the current matrix; see :func:`compute_metrics`."""
        return compute_metrics(self.mat)
