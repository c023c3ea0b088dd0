"""Each built-in preset on a tiny tree with the real file-name patterns; specs that find
nothing, absolute paths and optional splits, in `data check` and in `train` alike."""
import json

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from PIL import Image

from pixelwise.cli.data import command as data_command
from pixelwise.data import check_dataset, load_spec, quick_check
from pixelwise.errors import DataError


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def _pair(image, mask, size=(6, 8), grey=False):
    """An image and a 0/255 mask of the same size, in the formats the suffixes say."""
    img = np.full(size if grey else (*size, 3), 90, np.uint8)
    m = np.zeros(size, np.uint8)
    m[: size[0] // 2] = 255
    for path, arr in ((image, img), (mask, m)):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tif":
            tifffile.imwrite(path, arr)
        else:
            Image.fromarray(arr).save(path)


def _beside(root, folder, stems):
    for stem in stems:
        _pair(root / folder / f"{stem}.png", root / folder / f"{stem}_mask.png")


def liver(root):
    _beside(root, "train", ["000", "001", "002"])
    _beside(root, "val", ["000"])
    return {"train": 3, "val": 1}


def esophagus(root):
    _beside(root, "train_data", [f"{i:05d}" for i in range(10)])
    _beside(root, "test_data", ["00000", "00001"])
    return {"train": 9, "val": 1, "test": 2}


def lung_ct(root):
    for z in ("ID_0000_Z_0142", "ID_0001_Z_0146", "ID_0002_Z_0162", "ID_0003_Z_0132",
              "ID_0004_Z_0066"):
        _pair(root / "2d_images" / f"{z}.tif", root / "2d_masks" / f"{z}.tif", grey=True)
    return {"train": 4, "val": 1}


def corn(root):
    for folder, split in (("training", "train"), ("val", "val"), ("test", "test")):
        for i in range(2):
            _pair(root / folder / f"{split}_images" / f"{i + 1}.png",
                  root / folder / f"{split}_mask" / f"{i + 1}.png")
    return {"train": 2, "val": 2, "test": 2}


def voc2007(root):
    voc = root / "VOCdevkit" / "VOC2007"
    for i, (ids, split) in enumerate(((["000032", "000033"], "train"), (["000042"], "val"))):
        for sample_id in ids:
            _png(voc / "JPEGImages" / f"{sample_id}.jpg", np.full((6, 8, 3), 50, np.uint8))
            m = Image.fromarray(np.array([[0, 1, 15, 255] * 2] * 6, np.uint8), "P")
            m.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # a palette PNG, as VOC's
            if i:  # and a plain index PNG
                m = Image.fromarray(np.asarray(m))
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            m.save(voc / "SegmentationClass" / f"{sample_id}.png")
        lists = voc / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return {"train": 2, "val": 1}


def drive(root, test=True):
    ids = [("training", "training", str(i)) for i in range(21, 26)]
    ids += [("test", "test", f"{i:02d}") for i in (1, 2)] if test else []
    for folder, word, i in ids:
        _pair(root / folder / "images" / f"{i}_{word}.tif",
              root / folder / "1st_manual" / f"{i}_manual1.gif")
        _png(root / folder / "mask" / f"{i}_{word}_mask.gif", np.full((6, 8), 255, np.uint8))
    return {"train": 4, "val": 1, **({"test": 2} if test else {})}


def dsb2018(root):
    for sample_id in ("00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
                      "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9"):
        base = root / "stage1_train" / sample_id
        _png(base / "images" / f"{sample_id}.png", np.full((6, 8, 4), 80, np.uint8), "RGBA")
        for k in range(2):
            obj = np.zeros((6, 8), np.uint8)
            obj[k, k] = 255
            _png(base / "masks" / f"{k}{sample_id[:8]}.png", obj)
    return {"train": 1, "val": 1}


TREES = {f.__name__: f for f in (liver, esophagus, lung_ct, corn, voc2007, drive, dsb2018)}


@pytest.mark.parametrize("name", sorted(TREES))
def test_preset_reads_its_tree(name, tmp_path):
    counts = TREES[name](tmp_path)
    spec = load_spec(name, root=tmp_path)
    for split, n in counts.items():
        samples = spec.resolve(split)
        assert len(samples) == n, split
        assert not any("_mask" in s.image.name for s in samples)  # masks are not images
        assert quick_check(spec, split) == n
    report = check_dataset(spec)
    assert report.ok, report.problems
    assert set(report.splits) == set(counts) and not report.skipped
    total = sum(report.splits[s].class_pixels[1] for s in counts)
    assert total > 0  # the foreground was read as a class, not ignored


def test_drive_test_split_is_offered_only_when_present(tmp_path):
    drive(tmp_path, test=False)
    report = check_dataset(load_spec("drive", root=tmp_path))
    assert report.ok and report.skipped == ["test"]


def test_mask_beside_its_image_in_a_generic_spec(tmp_path):
    _beside(tmp_path, "train", ["000", "001"])
    spec = load_spec({"root": str(tmp_path), "class_names": ["bg", "liver"],
                      "mask": {"encoding": "threshold", "threshold": 128},
                      "splits": {"train": {"images": "train/*.png",
                                           "masks": "train/{stem}_mask.png"}}})
    assert [(s.image.name, s.mask.name) for s in spec.resolve("train")] == [
        ("000.png", "000_mask.png"), ("001.png", "001_mask.png")]
    assert check_dataset(spec).ok


def _write_spec(path, root, **split):
    spec = {"root": str(root), "class_names": ["bg", "fg"], "channels": 3,
            "mask": {"encoding": "threshold", "threshold": 128},
            "splits": {"train": {"images": "train/*.png", "exclude": ["*_mask.png"],
                                 "masks": "train/{stem}_mask.png", **split},
                       "val": {"images": "val/*.png", "masks": "val/{stem}_mask.png"}}}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_data_check_on_a_root_with_no_files_is_an_error_naming_the_globs(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(data_command, ["check", "liver", "--root",
                                               str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "no problems found" not in result.output and "skipped" not in result.output
    assert "no image matches any split" in result.output
    assert f"train: {tmp_path}/empty/train/*.png; val: {tmp_path}/empty/val/*.png" in result.output
    with pytest.raises(DataError, match="no image matches any split"):
        quick_check(load_spec("liver", root=tmp_path / "empty"), "val")


def test_train_on_a_root_with_no_files_fails_the_same_way(tmp_path, capsys):
    from pixelwise.cli import main

    (tmp_path / "empty").mkdir()
    spec = _write_spec(tmp_path / "spec.yaml", tmp_path / "empty")
    config = {"model": {"name": "unet_small"}, "data": {"spec": str(spec), "workers": 0},
              "train": {"epochs": 1, "progress": False},
              "output": {"dir": str(tmp_path / "runs"), "name": "r"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "run.yaml")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "no image matches any split" in err and f"{tmp_path}/empty/train/*.png" in err


def test_absolute_list_image_and_mask_paths_are_taken_as_given(tmp_path):
    data = tmp_path / "kvasir"
    _beside(data, "images", ["a", "b"])
    (data / "train.txt").write_text("a\nb\n")
    spec = load_spec({"root": str(tmp_path / "elsewhere"), "class_names": ["bg", "polyp"],
                      "mask": {"encoding": "threshold", "threshold": 128},
                      "splits": {"train": {"list": str(data / "train.txt"),
                                           "images": str(data / "images/{id}.png"),
                                           "masks": str(data / "images/{id}_mask.png")}}})
    assert [s.mask for s in spec.resolve("train")] == [data / "images/a_mask.png",
                                                       data / "images/b_mask.png"]
    assert quick_check(spec, "train") == 2 and check_dataset(spec).ok


def test_data_check_reports_every_problem_that_train_would_hit(tmp_path):
    # train's list file is missing, val has images: train fails, so check must too
    _beside(tmp_path, "val", ["000"])
    spec = _write_spec(tmp_path / "spec.yaml", tmp_path, list=str(tmp_path / "lists/train.txt"))
    with pytest.raises(DataError, match="lists/train.txt: split list not found"):
        quick_check(load_spec(spec), "train")
    result = CliRunner().invoke(data_command, ["check", str(spec), "--json",
                                               str(tmp_path / "r.json")])
    assert result.exit_code == 1 and "no problems found" not in result.output
    assert f"{tmp_path}/lists/train.txt: split list not found" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] == []
