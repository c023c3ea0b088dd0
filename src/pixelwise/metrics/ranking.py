"""How well an uncertainty map ranks a prediction's errors: the AUROC of the uncertainty as a
score for "this pixel is misclassified".

AUROC = P(u_err > u_ok) + P(u_err = u_ok) / 2 for a random misclassified pixel and a random
correct one (the Mann-Whitney U statistic over n_err * n_ok pairs): 1 when every error is
less sure than every correct pixel, 0.5 for a map that knows nothing. Pixels of the
``ignore_index`` do not count.

The scores are binned as the uncertainty files store them, ``round(u * 65535)``, and counted
per bin, so memory is two arrays of 65,536 counts whatever the data's size, and the AUROC is
exact (ties within a bin count one half) for the 16-bit maps users get; float64 sums round
it at about 1e-16. Undefined (None) when there is no error, or no correct pixel.
"""
from __future__ import annotations

import numpy as np

BINS = 65536


def auroc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUROC of a score from the counts of positives and negatives in each score bin
    (bins in increasing score order); ties within a bin count one half."""
    positives = np.asarray(positives, np.float64)
    negatives = np.asarray(negatives, np.float64)
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(negatives) - negatives  # negatives in lower bins
    return float((positives * (below + 0.5 * negatives)).sum() / (n_pos * n_neg))


class ErrorRanking:
    """Accumulates, image by image, the binned uncertainty of misclassified and of correct
    pixels; :meth:`auroc` at the end.

    Args:
        ignore_index: label of pixels left out.
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index
        self.errors = np.zeros(BINS, np.int64)
        self.correct = np.zeros(BINS, np.int64)

    def update(self, uncertainty: np.ndarray, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``uncertainty (H, W)`` in ``[0, 1]``, its predicted and true labels."""
        keep = np.asarray(target) != self.ignore_index
        scores = np.rint(np.clip(np.asarray(uncertainty, np.float64)[keep], 0, 1) * (BINS - 1))
        scores = scores.astype(np.int64)
        wrong = (np.asarray(pred) != np.asarray(target))[keep]
        self.errors += np.bincount(scores[wrong], minlength=BINS)
        self.correct += np.bincount(scores[~wrong], minlength=BINS)

    def auroc(self) -> float | None:
        return auroc_from_counts(self.errors, self.correct)

    def summary(self) -> dict[str, float | int | None]:
        """The AUROC with the pixel counts it rests on."""
        errors, correct = int(self.errors.sum()), int(self.correct.sum())
        return {"auroc": self.auroc(), "error_pixels": errors, "correct_pixels": correct}
