"""quick_check / check_dataset / `pixelwise data check`: every problem names its file."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pixelwise.cli.data import command
from pixelwise.data import check_dataset, quick_check
from pixelwise.data.check import format_report, median_frequency_weights
from pixelwise.errors import DataError


def _tree(tmp_path, n=3, size=(8, 10)):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "lbl").mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full(size, 10 * i, np.uint8)).save(tmp_path / f"img/{i}.png")
        m = np.zeros(size, np.uint8)
        m[: i + 1] = 1
        Image.fromarray(m).save(tmp_path / f"lbl/{i}.png")
    return {"root": str(tmp_path), "class_names": ["bg", "fg"], "channels": 1,
            "splits": {"train": {"images": "img/*.png", "masks": "lbl/{stem}.png"}}}


def test_clean_dataset_statistics(tmp_path):
    spec = _tree(tmp_path)
    spec["splits"]["test"] = {"images": "test/*.png", "masks": "lbl/{stem}.png", "optional": True}
    assert quick_check(spec, "train") == 3
    report = check_dataset(spec)
    assert report.ok and report.skipped == ["test"]  # absent optional split: not a problem
    assert not check_dataset(spec, splits=["test"]).ok  # unless asked for by name
    spec["splits"]["test"]["optional"] = False  # a split the spec requires must be here
    assert check_dataset(spec).problems == [f"{tmp_path}/test/*.png: no images match "
                                            "(splits.test.images)"]
    st = report.splits["train"]
    assert st.count == 3 and st.sizes == {"8x10": 3}
    # rows 1, 2, 3 of 8 are foreground in images 0, 1, 2
    assert st.class_pixels == [240 - 60, 60]
    assert st.class_frequency == pytest.approx([0.75, 0.25])
    # mean of 0, 10, 20 over equal-sized images, scaled to [0, 1]
    assert st.mean == pytest.approx([10 / 255])
    assert st.std == pytest.approx([np.sqrt(200 / 3) / 255])


def test_median_frequency_weights_by_hand():
    # class 0: 90 px in 2 images of 100 px -> 0.45; class 1: 10 px in 1 image -> 0.1;
    # class 2: 50 px in 1 image -> 0.5; median 0.45; class 3 absent -> 0
    w = median_frequency_weights(np.array([90, 10, 50, 0]), np.array([200, 100, 100, 0]))
    assert w == pytest.approx([1.0, 4.5, 0.9, 0.0])


def test_quick_check_lists_every_problem_naming_files(tmp_path):
    spec = _tree(tmp_path, n=4)
    (tmp_path / "lbl/1.png").unlink()                                     # missing mask
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "lbl/2.png")  # size mismatch
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "lbl/orphan.png")  # extra
    (tmp_path / "img/3.png").write_bytes(b"garbage")                      # unreadable
    with pytest.raises(DataError) as e:
        quick_check(spec, "train")
    msg = str(e.value)
    assert "4 problem(s) in split 'train'" in msg
    assert f"{tmp_path}/lbl/1.png: missing mask for image {tmp_path}/img/1.png" in msg
    assert f"{tmp_path}/lbl/2.png: size 5x5 does not match its image {tmp_path}/img/2.png" in msg
    assert f"{tmp_path}/lbl/orphan.png: extra mask with no matching image" in msg
    assert f"{tmp_path}/img/3.png: unreadable image header" in msg


def test_splits_sharing_a_mask_folder_have_no_extra_masks(tmp_path):
    # train/ and val/ images, one masks/ folder: val's masks are not "extra" for train
    for split, ids in (("train", "ab"), ("val", "c")):
        for i in ids:
            (tmp_path / split).mkdir(exist_ok=True)
            (tmp_path / "masks").mkdir(exist_ok=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{split}/{i}.png")
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"masks/{i}.png")
    spec = {"root": str(tmp_path), "class_names": ["bg", "fg"], "channels": 1,
            "splits": {s: {"images": f"{s}/*.png", "masks": "masks/{stem}.png"}
                       for s in ("train", "val")}}
    assert quick_check(spec, "train") == 2 and quick_check(spec, "val") == 1
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks/orphan.png")
    with pytest.raises(DataError, match=r"(?s)1 problem.*masks/orphan\.png: extra mask"):
        quick_check(spec, "val")


def test_pixel_limit_is_a_problem(tmp_path):
    spec = _tree(tmp_path, n=1)
    spec["max_pixels"] = 79
    with pytest.raises(DataError, match=r"img/0\.png: 10x8 = 80 pixels is over the pixel limit"):
        quick_check(spec, "train")


def test_full_check_finds_bad_labels_and_truncation(tmp_path):
    spec = _tree(tmp_path, n=3, size=(64, 64))
    Image.fromarray(np.full((64, 64), 5, np.uint8)).save(tmp_path / "lbl/1.png")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "img/2.png")
    data = (tmp_path / "img/2.png").read_bytes()
    (tmp_path / "img/2.png").write_bytes(data[: len(data) // 2])
    quick_check(spec, "train")  # headers are fine: only decoding finds these
    report = check_dataset(spec)
    assert not report.ok and len(report.problems) == 2
    assert any(p.startswith(f"{tmp_path}/lbl/1.png: label values not in the spec: 5")
               for p in report.problems)
    assert any(p.startswith(f"{tmp_path}/img/2.png: unreadable or truncated")
               for p in report.problems)


def test_cli_check_exit_codes_and_json(tmp_path):
    spec = _tree(tmp_path)
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    runner = CliRunner()
    ok = runner.invoke(command, ["check", str(tmp_path / "spec.yaml"), "--json",
                                 str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert "no problems found" in ok.output
    assert json.loads((tmp_path / "r.json").read_text())["splits"]["train"]["count"] == 3
    stats = runner.invoke(command, ["stats", str(tmp_path / "spec.yaml")])
    assert stats.exit_code == 0 and "class_weights: [" in stats.output
    # a misspelt split measures nothing: an error, not zeros ready to paste
    typo = runner.invoke(command, ["stats", str(tmp_path / "spec.yaml"), "--split", "trian"])
    assert typo.exit_code == 1 and "mean: [" not in typo.output
    assert "no split 'trian'" in str(typo.exception)
    (tmp_path / "lbl/0.png").unlink()
    bad = runner.invoke(command, ["check", str(tmp_path / "spec.yaml")])
    assert bad.exit_code == 1
    assert f"{tmp_path}/lbl/0.png: missing mask" in bad.output


def test_report_counts_unreadable_files_next_to_the_sizes(tmp_path):
    spec = _tree(tmp_path, n=4)
    (tmp_path / "img/3.png").write_bytes(b"garbage")          # header unreadable
    png = (tmp_path / "lbl/2.png").read_bytes()
    (tmp_path / "lbl/2.png").write_bytes(png[: len(png) // 2])  # truncated: pixels unreadable
    report = check_dataset(spec)
    assert report.splits["train"].unreadable == 2
    text = format_report(report)
    assert "[train] 4 samples; sizes: 8x10 (2); unreadable files: 2" in text


def test_symlink_loops_and_broken_links_are_reported(tmp_path):
    spec = _tree(tmp_path, n=2)
    (tmp_path / "img/loop.png").symlink_to(tmp_path / "img/loop.png")
    (tmp_path / "img/gone.png").symlink_to(tmp_path / "nowhere.png")
    report = check_dataset(spec)
    assert not report.ok
    assert f"{tmp_path}/img/loop.png: symlink loop, skipped by split 'train'" in report.problems
    assert (f"{tmp_path}/img/gone.png: broken symlink (to {tmp_path}/nowhere.png), skipped by "
            f"split 'train'") in report.problems
    assert report.splits["train"].count == 2
