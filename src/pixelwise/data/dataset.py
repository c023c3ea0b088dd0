"""The dataset the trainer iterates: a spec's split as (normalised image, class-index mask)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .annotations import annotation_mask, is_annotation
from .preprocess import adapt_channels, mask_tensor, to_tensor
from .readers import read_image, read_mask
from .spec import DatasetSpec, Sample, encode_mask, load_spec

Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _check_size(path: Path, shape: tuple[int, ...], image_path: Path, hw: tuple[int, int]) -> None:
    if tuple(shape[:2]) != tuple(hw):
        raise DataError(f"{path}: size {shape[1]}x{shape[0]} does not match its image "
                        f"{image_path} ({hw[1]}x{hw[0]})")


def load_sample(spec: DatasetSpec, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample untransformed: image ``(H, W, C)`` in its dtype, mask ``(H, W)`` int64.

    The mask is encoded to class indices; pixels outside the valid region are ``ignore_index``;
    an unlabelled sample (no mask template) is all ``ignore_index``.

    Raises:
        DataError: unreadable files, size mismatches, unknown label values (naming the file).
    """
    image = adapt_channels(read_image(sample.image, spec.max_pixels), spec.channels, sample.image)
    hw = image.shape[:2]
    if sample.mask is None:
        mask = np.full(hw, spec.ignore_index, dtype=np.int64)
    elif is_annotation(spec):  # LabelMe / COCO / CVAT shapes
        mask = annotation_mask(spec, sample, hw)
    elif isinstance(sample.mask, tuple):  # one file per object
        mask = np.zeros(hw, dtype=np.int64)
        for path in sample.mask:
            raw = read_mask(path, spec.max_pixels)
            _check_size(path, raw.shape, sample.image, hw)
            mask = np.maximum(mask, encode_mask(raw, spec, path))
    else:
        raw = read_mask(sample.mask, spec.max_pixels)
        _check_size(sample.mask, raw.shape, sample.image, hw)
        mask = encode_mask(raw, spec, sample.mask)
    if sample.valid is not None:
        valid = read_mask(sample.valid, spec.max_pixels)
        _check_size(sample.valid, valid.shape, sample.image, hw)
        inside = valid.any(axis=-1) if valid.ndim == 3 else valid > 0
        mask[~inside] = spec.ignore_index
    return image, mask


class SegmentationDataset(Dataset):
    """One split of a dataset spec, for a ``torch.utils.data.DataLoader`` (workers included).

    Args:
        spec: a :class:`DatasetSpec`, or anything :func:`load_spec` accepts.
        split: split name, e.g. ``"train"``.
        transform: joint ``(image, mask) -> (image, mask)`` on numpy arrays, applied before
            normalisation (see :func:`pixelwise.data.build_transforms`).
        cache_mb: keep up to this many MiB of decoded samples in memory (each process and
            loader worker its own). A training run reads every image once per epoch, and
            decoding a TIFF or PNG costs as much as a tenth of a CPU training step; 0 reads
            the files every time. Cached arrays are read-only.

    Shape:
        ``ds[i]`` -> image ``(C, H, W)`` float32 normalised with the spec's mean/std,
        mask ``(H, W)`` int64 with ``ignore_index`` where ignored.
    """

    def __init__(self, spec: DatasetSpec | dict | str, split: str,
                 transform: Transform | None = None, cache_mb: int = 0):
        self.spec = load_spec(spec)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache_room = cache_mb * 2**20
        self.split = split
        self.transform = transform
        self._samples = self.spec.resolve(split)
        labels = self.spec.labels
        self.class_names = list(labels.names)
        self.num_classes = self.spec.num_classes
        self.ignore_index = self.spec.ignore_index
        self.in_channels = self.spec.channels
        self.mean = list(self.spec.mean)
        self.std = list(self.spec.std)
        self.palette = list(labels.palette)

    @property
    def samples(self) -> list[tuple[Path, Path | tuple[Path, ...] | None]]:
        """``(image_path, mask_path)`` per sample; instance datasets give a tuple of mask paths."""
        return [(s.image, s.mask) for s in self._samples]

    def __len__(self) -> int:
        return len(self._samples)

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed sample: image ``(H, W, C)`` in its file's dtype, mask ``(H, W)`` int64."""
        if index in self._cache:
            return self._cache[index]
        image, mask = load_sample(self.spec, self._samples[index])
        size = image.nbytes + mask.nbytes
        if size <= self._cache_room:
            self._cache_room -= size
            image.flags.writeable = mask.flags.writeable = False  # shared by every epoch
            self._cache[index] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read_raw(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return (to_tensor(image, self.mean, self.std),
                mask_tensor(mask))
