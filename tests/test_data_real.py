"""Presets on the real datasets in ../shared/data (see common.shared_data when absent)."""

import numpy as np
import torch
from PIL import Image

from pixelwise.data import SegmentationDataset, build_transforms, load_spec, quick_check
from common import shared_data as _root


def test_camvid_eleven_classes_void_ignored():
    spec = load_spec("camvid", root=_root("camvid"))
    assert spec.num_classes == 11 and spec.class_names[0] == "Sky" and spec.ignore_index == 255
    assert quick_check(spec, "train") == 367 and quick_check(spec, "val") == 101
    ds = SegmentationDataset(spec, "train")
    image, mask = ds.read_raw(0)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    raw = np.asarray(Image.open(ds.samples[0][1]))
    assert (raw == 11).any()
    np.testing.assert_array_equal(mask == 255, raw == 11)  # void -> ignore, nothing else
    np.testing.assert_array_equal(mask[raw != 11], raw[raw != 11])
    t = build_transforms({"scale": [0.5, 2.0], "crop": 128, "hflip": 0.5, "elastic": True,
                          "seed": 0}, train=True, ignore_index=255)
    x, y = SegmentationDataset(spec, "train", transform=t)[0]
    assert x.shape == (3, 128, 128) and y.shape == (128, 128)
    assert set(torch.unique(y).tolist()) <= set(range(11)) | {255}


def test_isbi2012_zero_255_mapped_to_two_classes():
    spec = load_spec({"preset": "isbi2012", "root": str(_root("isbi2012"))})
    assert spec.class_names == ["cell", "membrane"] and spec.channels == 1
    train, val = SegmentationDataset(spec, "train"), SegmentationDataset(spec, "val")
    assert len(train) == 24 and len(val) == 6
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    image, mask = val.read_raw(0)
    raw = np.asarray(Image.open(val.samples[0][1]))
    assert image.shape == (512, 512, 1) and mask.shape == (512, 512)
    assert set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask == 1, raw == 0)  # membrane (0) is the positive class
    x, y = val[0]
    assert x.shape == (1, 512, 512) and y.dtype == torch.int64


def test_drive_field_of_view_is_ignored():
    spec = load_spec("drive", root=_root("drive"))
    ds = SegmentationDataset(spec, "train")
    assert len(ds) == 16 and len(SegmentationDataset(spec, "val")) == 4
    image, mask = ds.read_raw(0)
    assert image.shape == (584, 565, 3)
    sample = ds._samples[0]
    fov = np.asarray(Image.open(sample.valid)) > 0
    assert (mask[~fov] == 255).all() and (~fov).sum() > 50000
    assert set(np.unique(mask[fov])) == {0, 1}
    vessel = (mask == 1).sum() / fov.sum()
    assert 0.05 < vessel < 0.2  # about 9-13% of the field of view is vessel
