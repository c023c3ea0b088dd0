"""Lovasz-softmax and Lovasz hinge losses (Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax
loss: a tractable surrogate for the optimization of the intersection-over-union measure in
neural networks", CVPR 2018).

The Jaccard loss of a class is a submodular set function of the mispredicted pixels; its
Lovasz extension, evaluated at the vector of per-pixel errors, is a convex piecewise-linear
surrogate: sort the errors in decreasing order and weight each by the increment of the
Jaccard loss when that pixel joins the set (Algorithm 1 of the paper).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_inputs, check_mode


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    Args:
        gt_sorted: ``(P,)`` 0/1 ground truth of the class, in the order of decreasing error.

    Returns:
        ``(P,)`` float tensor: ``J(1..i) - J(1..i-1)`` where ``J(1..i)`` is the Jaccard loss
        when the ``i`` largest errors are the mispredicted pixels.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor, classes: str = "present") -> torch.Tensor:
    """Lovasz-softmax of already-filtered pixels.

    Args:
        probs: ``(P, C)`` softmax probabilities of the valid pixels.
        labels: ``(P,)`` their classes.
        classes: ``"present"`` averages over classes present in ``labels``; ``"all"`` over all.

    Returns:
        Scalar; 0 (with graph) when no pixel or no class qualifies.
    """
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovasz hinge of already-filtered pixels.

    Args:
        logits: ``(P,)`` foreground logits; labels: ``(P,)`` 0/1.

    Returns:
        Scalar: Lovasz extension of the foreground Jaccard loss at the hinge errors
        ``max(0, 1 - logit * sign)``.
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(labels.to(logits.dtype)[perm]))


class LovaszLoss(nn.Module):
    """Lovasz-softmax (``multiclass``) or Lovasz hinge (``binary``), a direct IoU surrogate.

    Args:
        mode: ``"multiclass"`` (softmax) or ``"binary"`` (hinge on the single logit).
        classes: ``"present"`` (paper default: classes present in the target) or ``"all"``.
        per_image: compute the loss per image and average (paper's choice for VOC), instead
            of over the whole batch as one set.
        ignore_index: target value whose pixels are removed before sorting.

    Shape:
        logits ``(N, C, H, W)``; target ``(N, H, W)`` long -> scalar.
    """

    def __init__(self, mode: str = "multiclass", classes: str = "present",
                 per_image: bool = False, ignore_index: int = 255):
        super().__init__()
        self.mode = check_mode(mode)
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.per_image = bool(per_image)
        self.ignore_index = int(ignore_index)

    def _flat(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of a group of images: logits (n, C, H, W), target (n, H, W)."""
        valid = (target != self.ignore_index).reshape(-1)
        labels = target.reshape(-1)[valid]
        if self.mode == "binary":
            return lovasz_hinge_flat(logits.reshape(-1)[valid], labels)
        c = logits.shape[1]
        probs = F.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, c)[valid]
        return lovasz_softmax_flat(probs, labels, self.classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.mode, self.ignore_index)
        logits = logits.float()
        if self.per_image:
            return torch.stack([self._flat(logits[i:i + 1], target[i:i + 1])
                                for i in range(logits.shape[0])]).mean()
        return self._flat(logits, target)
