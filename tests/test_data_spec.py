"""Dataset specs on tiny trees made here: templates, split lists, encodings, presets, errors."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import SegmentationDataset, list_presets, load_spec
from pixelwise.data.spec import encode_mask
from pixelwise.errors import ConfigError, DataError


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def _spec(root, **kw):
    base = {"root": str(root), "class_names": ["bg", "fg"], "channels": 1,
            "splits": {"train": {"images": "img/*.png", "masks": "lbl/{stem}.png"}}}
    base.update(kw)
    return load_spec(base)


def test_indices_with_ignore_values_and_dataset_item(tmp_path):
    _save(tmp_path / "img/a.png", np.full((4, 5), 128, np.uint8))
    _save(tmp_path / "lbl/a.png", np.array([[0, 1, 2, 0, 1]] * 4, np.uint8))
    spec = _spec(tmp_path, class_names=["a", "b"], mask={"ignore_values": [2]},
                 mean=[0.5], std=[0.25])
    ds = SegmentationDataset(spec, "train")
    assert len(ds) == 1 and ds.num_classes == 2 and ds.in_channels == 1 and ds.ignore_index == 255
    image, mask = ds[0]
    assert image.shape == (1, 4, 5) and image.dtype == torch.float32
    # (128/255 - 0.5) / 0.25
    assert torch.allclose(image, torch.full((1, 4, 5), (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert mask.dtype == torch.int64 and mask[0].tolist() == [0, 1, 255, 0, 1]
    assert ds.samples == [(tmp_path / "img/a.png", tmp_path / "lbl/a.png")]
    raw_image, raw_mask = ds.read_raw(0)
    assert raw_image.shape == (4, 5, 1) and raw_mask.dtype == np.int64
    ds2 = pickle.loads(pickle.dumps(ds))  # DataLoader workers pickle the dataset
    assert torch.equal(ds2[0][1], mask)


def test_value_map_threshold_rgb_and_unknown_values_name_the_file(tmp_path):
    spec = _spec(tmp_path, mask={"encoding": "value_map", "value_map": {0: 0, 255: 1}})
    raw = np.array([[0, 255], [255, 0]], np.uint8)
    assert encode_mask(raw, spec, "m.png").tolist() == [[0, 1], [1, 0]]
    with pytest.raises(DataError, match=r"m7\.png: label values not in the spec: 7"):
        encode_mask(np.array([[0, 7]], np.uint8), spec, "m7.png")
    lenient = _spec(tmp_path, mask={"encoding": "value_map", "value_map": {0: 0, 255: 1},
                                    "unmapped": "ignore"})
    assert encode_mask(np.array([[0, 7, 255]], np.uint8), lenient, "m.png").tolist() == [[0, 255, 1]]

    thr = _spec(tmp_path, mask={"encoding": "threshold", "threshold": 128})
    noisy = np.array([[3, 127, 128, 250]], np.uint8)  # JPEG noise around 0 / 255
    assert encode_mask(noisy, thr, "j.jpg").tolist() == [[0, 0, 1, 1]]

    rgb = _spec(tmp_path, class_names=["road", "car", "sky"],
                mask={"encoding": "rgb", "colors": [[128, 64, 128], [0, 0, 142], [70, 130, 180]],
                      "ignore_colors": [[0, 0, 0]]})
    raw = np.array([[[128, 64, 128], [0, 0, 142]], [[70, 130, 180], [0, 0, 0]]], np.uint8)
    assert encode_mask(raw, rgb, "c.png").tolist() == [[0, 1], [2, 255]]
    raw[0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"c\.png: label values not in the spec: \(1, 2, 3\)"):
        encode_mask(raw, rgb, "c.png")


def test_indices_out_of_range_names_the_file(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(DataError, match=r"bad\.png: label values not in the spec: 3, 9"):
        encode_mask(np.array([[0, 1, 3, 9, 255]], np.uint8), spec, "bad.png")
    with pytest.raises(DataError, match="colour.png: colour mask"):
        encode_mask(np.array([[[1, 2, 3]]], np.uint8), spec, "colour.png")


def test_id_templates_and_valid_region(tmp_path):
    # DRIVE-like names: {id}_training.tif -> {id}_manual1.gif, field of view -> ignore
    for i in ("21", "22"):
        _save(tmp_path / f"images/{i}_training.tif", np.zeros((3, 4, 3), np.uint8))
        _save(tmp_path / f"manual/{i}_manual1.gif", np.full((3, 4), 255, np.uint8))
        fov = np.zeros((3, 4), np.uint8)
        fov[1:, 1:] = 255
        _save(tmp_path / f"fov/{i}_training_mask.gif", fov)
    spec = load_spec({"root": str(tmp_path), "class_names": ["bg", "vessel"],
                      "mask": {"encoding": "value_map", "value_map": {0: 0, 255: 1}},
                      "splits": {"train": {"images": "images/*_training.tif",
                                           "id_from": "{id}_training.tif",
                                           "masks": "manual/{id}_manual1.gif",
                                           "valid": "fov/{id}_training_mask.gif"}}})
    ds = SegmentationDataset(spec, "train")
    assert [s.id for s in ds._samples] == ["21", "22"]
    _, mask = ds.read_raw(1)
    assert mask.tolist() == [[255, 255, 255, 255], [255, 1, 1, 1], [255, 1, 1, 1]]


def test_split_list_files_and_pairs(tmp_path):
    for i in ("a", "b", "c"):
        _save(tmp_path / f"JPEG/{i}.png", np.zeros((2, 2), np.uint8))
        _save(tmp_path / f"Seg/{i}.png", np.ones((2, 2), np.uint8))
    (tmp_path / "train.txt").write_text("a\n\n# comment\nc\n")
    (tmp_path / "pairs.txt").write_text("/JPEG/b.png /Seg/b.png\n")
    spec = _spec(tmp_path, splits={
        "train": {"list": "train.txt", "images": "JPEG/{id}.png", "masks": "Seg/{id}.png"},
        "aug": {"list": ["pairs.txt"], "images": "JPEG/{id}.png"}})
    assert [s.id for s in spec.resolve("train")] == ["a", "c"]
    (b,) = spec.resolve("aug")
    assert b.image == tmp_path / "JPEG/b.png" and b.mask == tmp_path / "Seg/b.png"
    with pytest.raises(DataError, match="missing.txt: split list not found"):
        _spec(tmp_path, splits={"t": {"list": "missing.txt", "images": "{id}"}}).resolve("t")


def test_instances_merged_into_semantic_mask(tmp_path):
    # DSB2018 layout: one PNG per nucleus
    _save(tmp_path / "s1/x/images/x.png", np.zeros((3, 3, 4), np.uint8), "RGBA")
    for k, (r, c) in enumerate([(0, 0), (2, 2)]):
        obj = np.zeros((3, 3), np.uint8)
        obj[r, c] = 255
        _save(tmp_path / f"s1/x/masks/{k}.png", obj)
    spec = load_spec({"root": str(tmp_path), "class_names": ["bg", "nucleus"],
                      "mask": {"encoding": "instances"},
                      "splits": {"train": {"images": "s1/*/images/*.png",
                                           "masks": "s1/{id}/masks/*.png"}}})
    ds = SegmentationDataset(spec, "train")
    assert len(ds.samples[0][1]) == 2
    image, mask = ds.read_raw(0)
    assert image.shape == (3, 3, 3)
    assert mask.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_holdout_is_seeded_and_disjoint(tmp_path):
    for i in range(10):
        _save(tmp_path / f"img/{i}.png", np.zeros((2, 2), np.uint8))
        _save(tmp_path / f"lbl/{i}.png", np.zeros((2, 2), np.uint8))
    spec = _spec(tmp_path, holdout={"from": "train", "to": "val", "fraction": 0.3, "seed": 1})
    train, val = spec.resolve("train"), spec.resolve("val")
    assert len(train) == 7 and len(val) == 3
    assert not {s.id for s in train} & {s.id for s in val}
    assert [s.id for s in val] == [s.id for s in spec.resolve("val")]
    assert spec.split_names == ["train", "val"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="mean"):
        _spec(tmp_path, mean=[0.1, 0.2])
    with pytest.raises(ConfigError, match="ignore_index 1 is one of the 2 class indices"):
        _spec(tmp_path, ignore_index=1)
    with pytest.raises(ConfigError, match="mask.value_map is required"):
        _spec(tmp_path, mask={"encoding": "value_map"})
    with pytest.raises(ConfigError, match="splits.train.images"):
        _spec(tmp_path, splits={"train": {"masks": "x"}})
    with pytest.raises(ConfigError, match="splits.train.masks: .*unknown field 'nope'"):
        _spec(tmp_path, splits={"train": {"images": "img/*.png", "masks": "{nope}"}})
    with pytest.raises(ConfigError, match="root"):
        load_spec("camvid")
    with pytest.raises(ConfigError, match="no split 'test'"):
        _spec(tmp_path).resolve("test")
    with pytest.raises(DataError, match="no images match"):
        _spec(tmp_path).resolve("train")


def test_presets_load_and_yaml_file(tmp_path):
    assert set(list_presets()) >= {"camvid", "isbi2012", "drive", "voc2012", "cityscapes", "dsb2018"}
    for name in list_presets():
        spec = load_spec({"preset": name, "root": str(tmp_path)})
        assert spec.root == tmp_path and spec.num_classes >= 2
    city = load_spec("cityscapes", root=tmp_path)
    assert city.num_classes == 19
    # labelIds -> trainIds: road 7 -> 0, bicycle 33 -> 18, license plate -1/unlabeled 0 -> ignore
    assert encode_mask(np.array([[7, 33, 0, 26]], np.uint8), city, "x").tolist() == [[0, 18, 255, 13]]
    (tmp_path / "spec.yaml").write_text("preset: camvid\nroot: data\nname: mine\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.name == "mine" and spec.root == tmp_path / "data" and spec.num_classes == 11
