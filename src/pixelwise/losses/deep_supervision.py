"""Deep supervision: one loss averaged over the heads of a model that returns several.

UNet++ with ``deep_supervision=True`` returns, in training mode, a list of logits (one per
head, all at the input's resolution); Zhou et al. train on the mean of the heads' losses.
:class:`DeepSupervisionLoss` wraps any pixelwise loss to take either form, so a trainer can
wrap every criterion unconditionally.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class DeepSupervisionLoss(nn.Module):
    """``loss`` applied to each head's logits and averaged (optionally weighted).

    Args:
        loss: a loss module following the pixelwise contract, ``loss(logits, target)``.
        weights: one non-negative weight per head (normalised to sum to 1); ``None`` for the
            plain mean, as the UNet++ paper.

    Called with a single logits tensor it is ``loss`` itself. Logits are cast to float32
    first (under autocast they may be half precision; the losses want full precision).

    Shape:
        logits ``(N, C, H, W)`` or a list/tuple of such; target ``(N, H, W)``. Returns a scalar.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        if weights is not None and (not weights or any(w < 0 for w in weights)
                                    or sum(weights) <= 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss(logits.float(), target)
        if len(logits) == 0:
            raise ValueError("deep supervision got an empty list of head outputs")
        weights = self.weights or [1.0] * len(logits)
        if len(weights) != len(logits):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(logits)} heads")
        total = sum(w * self.loss(head.float(), target) for w, head in zip(weights, logits))
        return total / sum(weights)
