"""One path from logits to labels: the whole-image forward pass and the labelling rule.

Validation (``training.train``), evaluation (``inference.evaluate``), prediction
(``inference.predict``), huge rasters (``inference.raster``) and the server all come through here,
so a checkpoint's validation metrics are the ones ``pixelwise evaluate`` reports.

- **Logits for a whole image** (:func:`whole_image_logits`): a padded model sees the image
  as it is. A valid-convolution model (smaller output than input, ``models.geometry``) gets
  the image mirrored outwards so that its output covers every pixel (the U-Net paper's
  overlap-tile border). The image sits at the output's origin: the same placement as a tile
  of ``inference.tiling``, so image pixel ``j`` always sees the pooling grid at the same phase,
  whatever the image's size, and a whole image agrees with its tiles.
- **Labels** (:func:`labels_from_probabilities`): the argmax of the class probabilities; a
  binary (one-logit) model labels a pixel foreground when its sigmoid is ``>= threshold``.
  A logit of exactly 0 (a zero-initialised FCN's score layers give nothing else) is
  foreground at the default 0.5. Probabilities rather than logits carry the rule because
  test-time augmentation averages probabilities (``inference.predict``).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models import geometry
from .tiling import mirror_pad

DEFAULT_THRESHOLD = 0.5

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def whole_image_logits(model: LogitsFn, images: torch.Tensor,
                       shape_model: object | None = None) -> torch.Tensor:
    """Logits at the images' size, in one forward pass, for padded and valid models alike.

    Args:
        model: a module or any callable ``(N, C, h, w) -> (N, K, h', w')`` (a backend).
        images: normalised ``(N, C, H, W)`` batch.
        shape_model: what answers the geometry (``output_shape``, ``valid_input_size``);
            default ``model`` itself (unwrapped from DistributedDataParallel).

    Shape:
        images ``(N, C, H, W)`` -> logits ``(N, K, H, W)``.
    """
    net = shape_model if shape_model is not None else getattr(model, "module", model)
    if not geometry.shrinks(net):
        return model(images)
    height, width = images.shape[-2:]
    return model(whole_image_input(images, net))[..., :height, :width]


def whole_image_input(images: torch.Tensor, shape_model: object) -> torch.Tensor:
    """What :func:`whole_image_logits` feeds the model: ``images`` as they are for a padded
    model; mirrored out to a valid input whose output covers them for a valid-convolution
    U-Net (whose first ``H x W`` output pixels are then the images')."""
    if not geometry.shrinks(shape_model):
        return images
    height, width = images.shape[-2:]
    in_h = geometry.valid_input_size(shape_model, height)
    in_w = geometry.valid_input_size(shape_model, width)
    out_h, out_w = geometry.output_shape(shape_model, in_h, in_w)
    # Output pixel j sees input pixel j + margin: a margin of mirrored context before the
    # image puts image pixel j at output pixel j; the rest of the input is mirrored after it.
    top, left = (in_h - out_h) // 2, (in_w - out_w) // 2
    return mirror_pad(images, top, in_h - height - top, left, in_w - width - left)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over channels, or the sigmoid of a one-channel logit."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is a probability, else ValueError."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def labels_from_probabilities(probs: torch.Tensor,
                              threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Class indices ``(N, H, W)`` int64 from probabilities ``(N, K, H, W)``.

    ``K == 1`` is a binary model's foreground probability: label 1 where ``>= threshold``.
    Otherwise the most probable class (``threshold`` unused).
    """
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).long()
    return probs.argmax(1)


def labels_from_logits(logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Class indices ``(N, H, W)`` from logits ``(N, K, H, W)``: the rule of
    :func:`labels_from_probabilities` applied to :func:`probabilities`, operation for
    operation as the Predictor does, so both give the same labels from the same logits."""
    return labels_from_probabilities(probabilities(logits), threshold)
