"""Post-processing chosen on predictions of held-out images: a run's validation split
(:func:`choose_on_split`, the end of a single run) or the out-of-fold predictions of a K-fold
run (:mod:`.crossval`). The choosing itself is :mod:`pixelwise.inference.postprocess`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..io.config import RunConfig


def predicted_pairs(checkpoint, dataset, device: str | torch.device, threshold: float,
                    cm=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(prediction, target)`` for each image of ``dataset``, one at a time, predicted as
    ``pixelwise evaluate`` does (:class:`~pixelwise.inference.predict.Predictor` on whole
    images with the checkpoint's normalisation, so validation's labels); each pair is also
    added to the confusion matrix ``cm`` when given."""
    from ..inference.predict import Predictor

    predictor = Predictor(checkpoint, threshold=threshold, device=device)
    for i in range(len(dataset)):
        image, target = dataset.read_raw(i)
        pred = predictor.predict(image).mask.astype(np.int64)
        if cm is not None:
            cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        yield pred, target


def choose_on_split(checkpoint: Path, cfg: RunConfig, device: str | torch.device) -> dict:
    """Post-processing chosen on ``cfg``'s validation split with ``checkpoint`` (one run's
    best.pt): :func:`~pixelwise.inference.postprocess.choose_postprocessing`'s spec."""
    from ..data import SegmentationDataset
    from ..inference.postprocess import choose_postprocessing

    dataset = SegmentationDataset(cfg.data.spec, cfg.data.val_split)
    pairs = predicted_pairs(checkpoint, dataset, device, cfg.train.val_threshold)
    return choose_postprocessing(pairs, dataset.num_classes, dataset.ignore_index,
                                 dataset.class_names)
