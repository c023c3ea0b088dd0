"""Input checks and helpers shared by every loss.

All losses follow one contract: ``logits`` of shape ``(N, C, H, W)``, ``target`` of shape
``(N, H, W)`` (long), pixels equal to ``ignore_index`` contribute nothing (neither to the
value nor to the gradient), and ``mode`` says how the channels are read:

- ``"multiclass"``: ``C >= 2`` channels, softmax over channels, target in ``[0, C)``.
- ``"binary"``: ``C == 1`` channel, sigmoid, target in ``{0, 1}``.
"""
from __future__ import annotations

from typing import Sequence

import torch

MODES = ("binary", "multiclass")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`MODES`, else raise ValueError."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'binary' or 'multiclass', got {mode!r}")
    return mode


def check_inputs(logits: torch.Tensor, target: torch.Tensor, mode: str, ignore_index: int) -> None:
    """Check shapes (no device sync for multiclass) and, in binary mode, target values.

    Raises:
        ValueError: wrong ranks, mismatched spatial sizes, a channel count that does not fit
            ``mode``, or a binary target holding something other than 0, 1 and ``ignore_index``.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    if target.dim() != 3:
        raise ValueError(f"target must be (N, H, W), got shape {tuple(target.shape)}")
    n, c, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        # Valid-padding U-Nets return a smaller map: crop the target to it before the loss.
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected {(n, h, w)})")
    if target.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if mode == "binary":
        if c != 1:
            raise ValueError(f"mode='binary' needs one-channel logits, got {c} channels")
        bad = (target != ignore_index) & (target != 0) & (target != 1)
        if bool(bad.any()):
            raise ValueError("binary target must hold 0, 1 or ignore_index "
                             f"({ignore_index}); found {sorted(set(target[bad].tolist()))[:5]}")
    elif c < 2:
        raise ValueError("mode='multiclass' needs at least 2 channels; one-channel (sigmoid) "
                         "models take mode='binary' (or the 'bce' loss)")


def valid_and_safe(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``target`` into a validity mask and a copy with ignored pixels set to 0.

    The copy can index/gather safely; every loss multiplies by (or selects with) the mask so
    the placeholder 0 never counts.
    """
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    return valid, safe


def class_weight_tensor(class_weights: Sequence[float] | torch.Tensor | None,
                        name: str = "class_weights") -> torch.Tensor | None:
    """Turn a list of per-class weights into a 1-D float tensor (or keep None)."""
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
    if w.numel() == 0 or bool((w < 0).any()):
        raise ValueError(f"{name} must be a non-empty list of non-negative numbers, got {class_weights}")
    return w


def check_num_weights(weight: torch.Tensor | None, num_classes: int, name: str = "class_weights") -> None:
    """Raise ValueError when a per-class weight vector does not have one entry per class."""
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(f"{name} has {weight.numel()} entries but the logits have "
                         f"{num_classes} classes")


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` pixels; 0 (keeping the graph) when none is valid.

    A batch whose pixels are all ignored (a crop entirely outside the field of view) must not
    turn the loss into NaN, which the trainer would treat as divergence.
    """
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1)
