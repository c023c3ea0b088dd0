"""LabelMe, COCO and CVAT annotations as masks: hand-made files with hand-computed pixels
(tests/data/annotations), the tools' rasterisation rules, data check, data convert, and
training straight from annotation files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.data import SegmentationDataset, check_dataset, load_spec
from pixelwise.data.annotations.draw import coco_polygon_mask, pil_mask
from pixelwise.data.check import format_report

DATA = Path(__file__).parent / "data" / "annotations"
CLASSES = ["background", "cat", "dog"]
IGNORE = 255


def spec_for(encoding: str, masks: str, root: Path = DATA, **mask) -> dict:
    return {"root": str(root), "class_names": CLASSES, "channels": 3,
            "mask": {"encoding": encoding, **mask},
            "splits": {"train": {"images": "*.png", "masks": masks}}}


def masks_of(spec: dict) -> dict[str, np.ndarray]:
    ds = SegmentationDataset(spec, "train")
    return {Path(image).name: ds.read_raw(i)[1] for i, (image, _) in enumerate(ds.samples)}


def pixels(h=6, w=8, **classes) -> np.ndarray:
    """A mask from {value: [(x, y), ...]} written by hand."""
    out = np.zeros((h, w), dtype=np.int64)
    for value, points in classes.items():
        for x, y in points:
            out[y, x] = {"cat": 1, "dog": 2, "ignore": IGNORE}[value]
    return out


def box(x0, x1, y0, y1):
    return [(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]


# --- the hand-made files -------------------------------------------------------------------

def test_labelme_file_drawn_as_labelme_draws_it():
    got = masks_of(spec_for("labelme", "labelme/{stem}.json", line_width=1))
    # rectangle (3,2)-(1,1): corners in drag order, both ends inclusive (ImageDraw.rectangle);
    # triangle (4,0) (7,0) (7,3): outline pixels + filled inside; line y=5 x 0..3, 1 px wide;
    # a 1-pixel __ignore__ rectangle drawn last, over the triangle's corner.
    triangle = [(4, 0), (5, 0), (6, 0), (5, 1), (6, 1), (7, 1), (6, 2), (7, 2), (7, 3)]
    want = pixels(cat=box(1, 3, 1, 2) + box(0, 3, 5, 5), dog=triangle, ignore=[(7, 0)])
    assert np.array_equal(got["street.png"], want)
    assert not got["empty.png"].any()


def test_coco_file_polygons_rle_and_crowd():
    got = masks_of(spec_for("coco", "coco.json"))
    # polygon box (1,1)-(4,3): the pixels whose centres (x + .5, y + .5) are inside;
    # uncompressed RLE [36, 8, 4] down the columns: column 6, and rows 0-1 of column 7;
    # a compressed crowd RLE at x=0, y=4..5 -> ignore.
    want = pixels(cat=box(1, 3, 1, 2), dog=box(6, 6, 0, 5) + box(7, 7, 0, 1),
                  ignore=[(0, 4), (0, 5)])
    assert np.array_equal(got["street.png"], want)
    assert not got["empty.png"].any()


def test_cvat_file_z_order_boxes_polygons_masks_polylines():
    got = masks_of(spec_for("cvat", "cvat.xml", line_width=1))
    # the dog polygon (z 0) comes after the cat box (z 1) in the file but is drawn first;
    # mask rle "1, 1, 1, 3" along the rows of its 2x3 box at (6, 3); polyline y=5 x 0..2.
    want = pixels(dog=[(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (7, 3), (7, 4), (6, 5), (7, 5)],
                  cat=box(1, 3, 1, 2) + box(0, 2, 5, 5))
    assert np.array_equal(got["street.png"], want)


@pytest.mark.parametrize("encoding,masks,shapes", [
    ("labelme", "labelme/{stem}.json", "cat 2, dog 1, __ignore__ 1"),
    ("coco", "coco.json", "cat 1, dog 1, __ignore__ 1"),
    ("cvat", "cvat.xml", "cat 2, dog 2")])
def test_data_check_counts_shapes_and_lists_unannotated_images(encoding, masks, shapes):
    report = check_dataset(spec_for(encoding, masks))
    assert report.ok, report.problems
    text = format_report(report)
    assert f"shapes per class: {shapes}" in text
    assert report.annotations["train"]["unannotated"] == [str(DATA / "empty.png")]
    assert "images without annotations: 1" in text


# --- the rules against the references --------------------------------------------------------

def test_coco_polygon_rule_matches_pycocotools():
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for i in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        xy = rng.uniform(-4, 34, 2 * int(rng.integers(3, 8)))
        if i % 2:
            xy = np.round(xy * 2) / 2  # on the half-pixel grid, where rounding ties live
        want = coco_mask.decode(coco_mask.frPyObjects([list(xy)], h, w))[..., 0]
        assert np.array_equal(coco_polygon_mask(xy, h, w), want.astype(bool)), (h, w, xy)


def test_compressed_rle_decoded_like_pycocotools(tmp_path):
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    truth = (rng.random((6, 8)) > 0.6).astype(np.uint8)
    rle = coco_mask.encode(np.asfortranarray(truth))
    doc = json.loads((DATA / "coco.json").read_text())
    doc["annotations"] = [{"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0,
                           "segmentation": {"size": [6, 8],
                                            "counts": rle["counts"].decode()}}]
    _copy_images(tmp_path)
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    got = masks_of(spec_for("coco", "coco.json", root=tmp_path))["street.png"]
    assert np.array_equal(got, truth * 2)


def test_labelme_circle_and_point_follow_shape_to_mask():
    # circle centre (5, 5) through (5, 8): radius 3 -> ellipse box (2, 2)-(8, 8)
    got = pil_mask(11, 11, "circle", np.array([[5.0, 5.0], [5.0, 8.0]]))
    assert got[5, 2] and got[5, 8] and got[2, 5] and got[8, 5] and not got[5, 9]
    assert got.sum() == pil_mask(11, 11, "point", np.array([[5.0, 5.0]]), point_size=3).sum()


# --- convert, train ------------------------------------------------------------------------

def _copy_images(dst: Path) -> None:
    for name in ("street.png", "empty.png"):
        shutil.copy(DATA / name, dst / name)


def test_data_convert_writes_pngs_and_a_plain_spec(tmp_path):
    from pixelwise.cli import main

    spec_file = tmp_path / "cvat.yaml"
    spec_file.write_text(yaml.safe_dump(spec_for("cvat", "cvat.xml", line_width=1)))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "convert", str(spec_file), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 0
    plain = yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())
    assert plain["mask"] == {"encoding": "indices"}
    assert plain["splits"]["train"]["masks"] == "masks/train/{id}.png"
    png = np.asarray(Image.open(tmp_path / "out" / "masks" / "train" / "street.png"))
    assert png.dtype == np.uint8
    want = masks_of(spec_for("cvat", "cvat.xml", line_width=1))
    got = masks_of(load_spec(tmp_path / "out" / "spec.yaml"))
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("encoding", ["coco", "labelme"])
def test_training_straight_from_annotation_files(encoding, tmp_path):
    from pixelwise.config import load_config
    from pixelwise.data.annotations.export import coco_document, write_labelme
    from pixelwise.data.synthetic import write_synthetic_dataset
    from pixelwise.engine import train as T

    spec_path = write_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=32, seed=2)
    raw = yaml.safe_load(spec_path.read_text())
    names = raw["class_names"]
    for split in ("train", "val"):
        images = sorted((tmp_path / "data" / split / "images").glob("*.png"))
        masks = [np.asarray(Image.open(p)) for p in sorted(
            (tmp_path / "data" / split / "masks").glob("*.png"))]
        if encoding == "coco":
            doc = coco_document(list(zip(images, masks)), names)
            (tmp_path / "data" / f"{split}.json").write_text(json.dumps(doc))
            raw["splits"][split]["masks"] = f"{split}.json"
        else:
            for image, mask in zip(images, masks):
                write_labelme(image, mask, image.with_suffix(".json"), names)
            raw["splits"][split]["masks"] = f"{split}/images/{{stem}}.json"
    raw["mask"] = {"encoding": encoding}
    spec_path.write_text(yaml.safe_dump(raw))
    # the annotation files give back the synthetic masks (COCO exactly, LabelMe within 1 px)
    ds = SegmentationDataset(spec_path, "train")
    first = np.asarray(Image.open(tmp_path / "data" / "train" / "masks" / "0000.png"))
    agree = (ds.read_raw(0)[1] == first).mean()
    assert agree == 1.0 if encoding == "coco" else agree > 0.97
    cfg = load_config(raw={
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
        "data": {"spec": str(spec_path), "batch_size": 2, "workers": 0, "crop_size": 24},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "seed": 0, "progress": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"}})
    run = T.train(cfg)
    assert (run / "checkpoints" / "last.pt").is_file()


def test_split_file_parsed_once_and_again_when_edited(tmp_path, monkeypatch):
    from pixelwise.data import annotations

    calls = []
    parse = annotations.SPLIT_FILE_READERS["coco"]
    monkeypatch.setitem(annotations.SPLIT_FILE_READERS, "coco",
                        lambda path: calls.append(path) or parse(path))
    _copy_images(tmp_path)
    shutil.copy(DATA / "coco.json", tmp_path / "coco.json")
    spec = spec_for("coco", "coco.json", root=tmp_path)
    for _ in range(2):
        masks_of(spec)
        check_dataset(spec)
    assert len(calls) == 1
    edit = json.loads((tmp_path / "coco.json").read_text())
    edit["annotations"] = edit["annotations"][:1]
    (tmp_path / "coco.json").write_text(json.dumps(edit, indent=1))
    assert masks_of(spec)["street.png"].max() == 1  # the edit is seen: only the cat is left
    assert len(calls) == 2
