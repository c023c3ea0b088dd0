"""Cross-entropy (softmax, class-weighted) and binary cross-entropy (sigmoid, one channel)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import (check_inputs, check_num_weights, class_weight_tensor, masked_mean,
                      valid_and_safe)


def pixel_nll(logits: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``-log softmax(logits)[target]``.

    Shape:
        logits ``(N, C, H, W)``, safe_target ``(N, H, W)`` in ``[0, C)`` -> ``(N, H, W)``.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    return -logp.gather(1, safe_target.unsqueeze(1)).squeeze(1)


def pixel_bce(logits: torch.Tensor, safe_target: torch.Tensor,
              pos_weight: float | None = None) -> torch.Tensor:
    """Per-pixel binary cross-entropy of one-channel logits.

    Shape:
        logits ``(N, 1, H, W)``, safe_target ``(N, H, W)`` in ``{0, 1}`` -> ``(N, H, W)``.
    """
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float().squeeze(1), safe_target.float(),
                                              pos_weight=pw, reduction="none")


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with optional class weights, averaged over non-ignored pixels.

    With ``class_weights`` the mean is weighted like ``torch.nn.CrossEntropyLoss``:
    ``sum_i w[y_i] * nll_i / sum_i w[y_i]`` over non-ignored pixels ``i``. A batch with no
    valid pixel gives 0.

    Args:
        class_weights: one weight per class, or None for all ones.
        ignore_index: target value whose pixels are skipped.
        label_smoothing: as in ``torch.nn.functional.cross_entropy`` (0 = off).

    Shape:
        logits ``(N, C, H, W)`` with ``C >= 2``; target ``(N, H, W)`` long -> scalar.
    """

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None,
                 ignore_index: int = 255, label_smoothing: float = 0.0):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", class_weight_tensor(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, "multiclass", self.ignore_index)
        check_num_weights(self.class_weights, logits.shape[1])
        valid, safe = valid_and_safe(target, self.ignore_index)
        # A no-op when the module was moved with .to(device); saves callers who forgot.
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        # torch's reduction="none" already zeroes ignored pixels; the sums below then give
        # the weighted mean while a fully ignored batch gives 0, not NaN. Channels_last
        # logits stay 4-D: torch copies them to NCHW and its log-softmax over dim 1 is
        # fast; as (pixels, classes) rows with no copy it is not (12 classes, 4 x 256 x
        # 256, one thread: 52 ms forward against 7 ms + the copy).
        loss = F.cross_entropy(logits.float(), target, weight=weight,
                               ignore_index=self.ignore_index, reduction="none",
                               label_smoothing=self.label_smoothing)
        if weight is None:
            return masked_mean(loss, valid)
        w = torch.where(valid, weight[safe], torch.zeros((), device=logits.device))
        return loss.sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


class BCELoss(nn.Module):
    """Binary cross-entropy for one-channel (sigmoid) models, mean over non-ignored pixels.

    Args:
        pos_weight: weight of the positive term (``torch.nn.BCEWithLogitsLoss`` meaning),
            e.g. ``n_negative / n_positive`` for thin structures such as vessels.
        ignore_index: target value whose pixels are skipped.

    Shape:
        logits ``(N, 1, H, W)``; target ``(N, H, W)`` long in ``{0, 1, ignore_index}`` -> scalar.
    """

    def __init__(self, pos_weight: float | None = None, ignore_index: int = 255):
        super().__init__()
        self.pos_weight = pos_weight
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, "binary", self.ignore_index)
        valid, safe = valid_and_safe(target, self.ignore_index)
        return masked_mean(pixel_bce(logits, safe, self.pos_weight), valid)
