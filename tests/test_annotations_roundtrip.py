"""Masks -> polygons -> masks: the outlines that ``predict --format`` writes give the mask
back when the tools' rules (or our readers) draw them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pixelwise.data import SegmentationDataset
from pixelwise.data.annotations.contours import class_polygons
from pixelwise.data.annotations.draw import coco_polygon_mask, pil_mask

from common import SHARED_DATA

CAMVID = SHARED_DATA / "camvid"


def redraw(polygons, shape, kind):
    out = np.zeros(shape, dtype=np.int64)
    for cls, poly in polygons:
        pixels = coco_polygon_mask(poly.ravel(), *shape) if kind == "crack" else \
            pil_mask(*shape, "polygon", poly)
        out[pixels] = cls
    return out


@pytest.mark.parametrize("kind", ["crack", "centre"])
def test_unsimplified_outlines_rebuild_random_masks_exactly(kind):
    # noise masks: holes, islands in holes, classes meeting corner to corner, 1-px regions
    rng = np.random.default_rng(0)
    for i in range(150):
        h, w = (int(v) for v in rng.integers(2, 24, 2))
        k = int(rng.integers(2, 5))
        noise = rng.random((h, w, k))
        mask = (ndimage.gaussian_filter(noise, (1, 1, 0)) if i % 2 else noise).argmax(-1)
        polygons = class_polygons(mask, k, kind, tolerance=0)
        assert np.array_equal(redraw(polygons, mask.shape, kind), mask), (i, mask)


def test_outline_of_a_ring_with_an_island():
    mask = np.zeros((7, 7), dtype=np.int64)
    mask[1:6, 1:6] = 1
    mask[2:5, 2:5] = 0  # the hole: written as background over the ring
    mask[3, 3] = 2      # an island of class 2 in the hole
    polygons = class_polygons(mask, 3, "crack", tolerance=0)
    assert [c for c, _ in polygons] == [1, 0, 2]  # by decreasing filled area
    assert polygons[0][1].tolist() == [[6, 1], [6, 6], [1, 6], [1, 1]]  # corners, clockwise
    assert np.array_equal(redraw(polygons, mask.shape, "crack"), mask)


def _ckpt(path: Path) -> Path:
    import torch

    from pixelwise.checkpoint import save_checkpoint
    from pixelwise.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=3, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.head.weight.mul_(40.0)
    return save_checkpoint(path, model, "unet", dict(in_channels=3, num_classes=3,
                                                    base_channels=4, depth=2),
                           ["sky", "road", "car"], mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("fmt", ["labelme", "coco"])
def test_predict_format_reads_back_as_the_predicted_mask(fmt, tmp_path):
    from pixelwise.cli import main

    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        image = ndimage.gaussian_filter(rng.random((40, 52, 3)), (3, 3, 0))
        Image.fromarray((image * 255).astype(np.uint8)).save(inputs / f"{name}.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", str(_ckpt(tmp_path / "m.pt")), str(inputs), "-o", str(out),
              "--format", fmt, "--no-progress"])
    assert exit_info.value.code == 0
    if fmt == "labelme":
        doc = json.loads((out / "a.json").read_text())
        assert doc["imagePath"] == "../in/a.png" and doc["imageHeight"] == 40
        masks = "out/{stem}.json"
    else:
        doc = json.loads((out / "coco.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["sky", "road", "car"]
        masks = "out/coco.json"
    spec = {"root": str(tmp_path), "class_names": ["sky", "road", "car"],
            "mask": {"encoding": fmt}, "splits": {"p": {"images": "in/*.png", "masks": masks}}}
    ds = SegmentationDataset(spec, "p")
    for i, (image, _) in enumerate(ds.samples):
        predicted = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
        assert len(np.unique(predicted)) > 1  # a real test: several regions
        back = ds.read_raw(i)[1]
        # COCO outlines on pixel corners come back exactly; LabelMe's move <= 0.3 px
        assert (back == predicted).mean() >= (1.0 if fmt == "coco" else 0.98)


def _camvid_iou(files, kind, tolerance):
    inter, union = np.zeros(11), np.zeros(11)
    for f in files:
        mask = np.asarray(Image.open(f)).astype(np.int64)
        # void (11) is a region like any other here, so that the classes around it are whole
        back = redraw(class_polygons(mask, 12, kind, tolerance), mask.shape, kind)
        for c in range(11):
            inter[c] += ((mask == c) & (back == c)).sum()
            union[c] += ((mask == c) | (back == c)).sum()
    return inter / np.maximum(union, 1)


@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid")
def test_camvid_val_round_trip_first_images():
    from pixelwise.data.annotations.export import TOLERANCE

    files = sorted((CAMVID / "valannot").glob("*.png"))[:2]
    assert _camvid_iou(files, "crack", TOLERANCE["coco"]).min() == 1.0
    assert _camvid_iou(files, "centre", TOLERANCE["labelme"]).min() >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid")
@pytest.mark.parametrize("fmt,kind", [("coco", "crack"), ("labelme", "centre")])
def test_camvid_val_round_trip_iou_per_class(fmt, kind):
    from pixelwise.data.annotations.export import TOLERANCE

    iou = _camvid_iou(sorted((CAMVID / "valannot").glob("*.png")), kind, TOLERANCE[fmt])
    assert iou.min() >= 0.99, iou
