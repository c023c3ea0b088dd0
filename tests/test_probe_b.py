"""Issue 22, part B: each case of the hostile probe that gave a wrong result with exit 0, a
traceback or a misleading message, on tiny trees made here."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from pixelwise import save_checkpoint
from pixelwise.cli import cli
from pixelwise.io.config import load_config
from pixelwise.data import check_dataset, load_spec, quick_check
from pixelwise.inference import tiling
from pixelwise.training.preflight import preflight
from pixelwise.inference.predict import Predictor
from pixelwise.errors import ConfigError, DataError, worker_message
from pixelwise.models import build_model
from pixelwise.training.plan import Fingerprint, fingerprint, plan


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _tree(root, n=3, size=(16, 16), mask_value=1):
    """``n`` grey images with masks: the top row ``mask_value``, the rest 0."""
    for i in range(n):
        _png(root / f"img/{i}.png", np.full(size, 40 * i))
        mask = np.zeros(size)
        mask[0] = mask_value
        _png(root / f"lbl/{i}.png", mask)
    return {"name": "tiny", "root": str(root), "class_names": ["bg", "fg"], "channels": 1,
            "splits": {"train": {"images": "img/*.png", "masks": "lbl/{stem}.png"}}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = dict(in_channels=1, num_classes=2, base_channels=4, depth=2)  # needs 4 px
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model("unet", **kwargs), "unet", kwargs, ["bg", "fg"],
                    mean=(0.5,), std=(0.25,))
    return path


# -- 6, 7: an empty list file is an empty split, and nothing is scored on it ------------------

def test_empty_list_file_is_a_problem_everywhere(tmp_path, checkpoint):
    spec = _tree(tmp_path)
    (tmp_path / "val.txt").write_text("# no ids yet\n\n")
    spec["splits"]["val"] = {"list": "val.txt", "images": "img/{id}.png", "masks": "lbl/{id}.png"}
    with pytest.raises(DataError, match=r"val.txt: split list has no ids \(splits.val.list\)"):
        quick_check(spec, "val")
    assert any("val.txt: split list has no ids" in p for p in check_dataset(spec).problems)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["evaluate", "-c", str(checkpoint), "-d",
                                      str(tmp_path / "spec.yaml"), "--split", "val",
                                      "-o", str(tmp_path / "eval"), "--device", "cpu"])
    assert result.exit_code == 1 and "split list has no ids" in str(result.exception)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_refuses_masks_without_a_labelled_pixel(tmp_path, checkpoint):
    spec = _tree(tmp_path, n=2)
    spec["mask"] = {"encoding": "indices", "ignore_values": [0, 1]}  # every pixel ignored
    from pixelwise.inference.evaluate import evaluate

    with pytest.raises(DataError, match="no labelled pixel in its 2 mask"):
        evaluate(checkpoint, spec, "train", tmp_path / "eval", device="cpu")
    assert not (tmp_path / "eval" / "metrics.json").exists()


# -- 8: a directory link loop ----------------------------------------------------------------

def test_recursive_glob_counts_each_file_once_and_reports_links(tmp_path):
    _png(tmp_path / "img/a.png", np.zeros((4, 4)))
    _png(tmp_path / "lbl/a.png", np.zeros((4, 4)))
    os.symlink(".", tmp_path / "img/loop")
    spec = {"root": str(tmp_path), "class_names": ["bg", "fg"], "channels": 1,
            "splits": {"train": {"images": "img/**/*.png", "masks": "lbl/{stem}.png"}}}
    assert [s.image for s in load_spec(spec).resolve("train")] == [tmp_path / "img/a.png"]
    report = check_dataset(spec)
    assert report.splits["train"].count == 1
    (problem,) = [p for p in report.problems if "directory link" in p]
    assert problem.startswith(f"{tmp_path}/img/loop/a.png: the same file as another match")


# -- 9: masks with no labelled pixel -----------------------------------------------------------

def test_unlabelled_masks_are_problems_and_the_fingerprint_says_so(tmp_path):
    spec = _tree(tmp_path, n=2)
    spec["mask"] = {"encoding": "value_map", "value_map": {0: 255, 1: 255}}
    report = check_dataset(spec)
    assert [p for p in report.problems if "no labelled pixel" in p] == [
        f"{tmp_path}/lbl/{i}.png: no labelled pixel (all 256 are ignore_index 255 after the "
        f"mask encoding)" for i in range(2)]
    with pytest.raises(DataError, match="cannot plan from split 'train': .*no labelled pixel"):
        fingerprint(spec)
    # the fingerprint's foreground share: labelled pixels not of class 0 (16 of 256 here)
    spec["mask"] = {"encoding": "indices"}
    assert fingerprint(spec).foreground_fraction == pytest.approx(16 / 256)


# -- 14: a validation image smaller than the model takes -------------------------------------

def _run_config(tmp_path, spec, **data):
    return load_config(raw={
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2, "padding": "same"}},
        "data": {"spec": spec, "train_split": "train", "val_split": "val", "crop_size": 8,
                 "batch_size": 2, **data},
        "train": {"epochs": 1, "device": "cpu"},
        "output": {"dir": str(tmp_path / "runs"), "name": "r"}})


def test_preflight_and_data_check_catch_a_val_image_too_small(tmp_path):
    spec = _tree(tmp_path)
    _png(tmp_path / "val/tiny.png", np.zeros((1, 1)))
    _png(tmp_path / "vlbl/tiny.png", np.zeros((1, 1)))
    spec["splits"]["val"] = {"images": "val/*.png", "masks": "vlbl/{stem}.png"}
    with pytest.raises(ConfigError, match=r"data.val_split: 1 image\(s\) of split 'val' are too "
                                          r"small for unet .*tiny.png: 1x1 is under the model's "
                                          r"smallest input \(4 pixels a side\)"):
        preflight(_run_config(tmp_path, spec))
    assert not (tmp_path / "runs").exists()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "spec.yaml"),
                                      "--min-size", "4"])
    assert result.exit_code == 1 and "tiny.png: 1x1 is under the model's smallest" in result.output
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0, result.output


# -- 21: the planner on two images -------------------------------------------------------------

def test_planner_plans_a_batch_the_data_fills(tmp_path):
    fp = Fingerprint(num_images=2, median_size=(64, 64), channels=1, num_classes=2,
                     class_frequency=[0.9, 0.1], class_weights=[1.0, 9.0],
                     foreground_fraction=0.1, mean=[0.5], std=[0.2])
    raw = plan(fp, {"preset": "drive", "root": str(tmp_path)}, minutes=1.0)
    assert raw["data"]["batch_size"] == 2
    many = Fingerprint(**{**fp.to_dict(), "num_images": 50})
    assert plan(many, {}, 1.0)["data"]["batch_size"] == 4


def test_a_refused_plan_leaves_no_run_folder(tmp_path, monkeypatch):
    spec = _tree(tmp_path / "data", n=3, size=(64, 64))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "spec.yaml"),
                                      "--minutes", "0.05", "--set", "data.batch_size=8", "-q"])
    assert result.exit_code == 1
    assert "data.batch_size: 3 training images give no complete step" in str(result.exception)
    assert not (tmp_path / "runs").exists()  # no fingerprint.json, no empty checkpoints/


# -- 15: an error in a DataLoader worker ---------------------------------------------------------

class _Truncated(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError("/data/img/7.png: truncated image (image file is truncated)")


def test_worker_error_is_one_line_naming_the_file():
    loader = torch.utils.data.DataLoader(_Truncated(), num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith("Caught DataError in DataLoader worker process 0.")
    assert worker_message(str(e.value)) == ("/data/img/7.png: truncated image (image file is "
                                            "truncated) (in DataLoader worker process 0)")
    assert worker_message("x.png: plain") == "x.png: plain"


# -- 12: one input's failure, and the memory of tiled prediction -------------------------------

def test_a_failure_of_any_kind_stops_only_its_input(tmp_path, monkeypatch):
    from pixelwise.inference import batch

    def fake(predictor, job, out, opts):
        if job.path.name == "huge.png":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1728000000 bytes.")
        if job.path.name == "odd.png":
            raise KeyError("boom")
        return {"input": str(job.path)}

    monkeypatch.setattr(batch, "_predict", fake)
    jobs = batch.plan_jobs([tmp_path / "huge.png", tmp_path / "odd.png", tmp_path / "ok.png"])
    results = batch.run_jobs(SimpleNamespace(), jobs, tmp_path / "out")
    assert [e["input"] for _, _, e in results.done] == [str(tmp_path / "ok.png")]
    assert [f["error"] for _, f in results.failed] == [
        f"{tmp_path}/huge.png: out of memory ([enforce fail at alloc_cpu.cpp:117] "
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1728000000 bytes.)",
        f"{tmp_path}/odd.png: KeyError: 'boom'"]


def test_tiled_sums_are_float64_for_one_band_only(monkeypatch):
    sizes = []

    def zeros(*shape, dtype=None, **kw):
        out = torch.zeros(*shape, dtype=dtype, **kw)
        if dtype == torch.float64:
            sizes.append(out.numel())
        return out

    monkeypatch.setattr(tiling, "torch", SimpleNamespace(**{**vars(torch), "zeros": zeros}))
    x = torch.rand(1, 2, 200, 120)
    out = tiling.sliding_window(lambda t: t, x, 32, 0.25)
    assert out.dtype == torch.float32 and torch.equal(out, x)  # exact, as before
    assert max(sizes) == 2 * 32 * 120  # a band a tile high, not 2 * 200 * 120


# -- 13: video --skip-existing over an empty areas file ----------------------------------------

def test_empty_video_areas_file_is_predicted_again(tmp_path):
    from pixelwise.inference.video import video_entry_from_outputs

    (tmp_path / "clip_areas.csv").write_text("")
    with pytest.raises(DataError, match="clip_areas.csv: no header"):
        video_entry_from_outputs(tmp_path / "clip.mp4", tmp_path, "clip", False, ["bg", "fg"])


# -- 19: list ids with spaces --------------------------------------------------------------------

def test_list_lines_are_whole_ids_or_tab_separated_pairs(tmp_path):
    for name in ("my image", "b", "c"):
        _png(tmp_path / f"img/{name}.png", np.zeros((2, 2)))
        _png(tmp_path / f"lbl/{name}.png", np.zeros((2, 2)))
    (tmp_path / "ids.txt").write_text("my image\n  b  \n")
    (tmp_path / "pairs.txt").write_text("img/b.png\tlbl/c.png\n/img/c.png /lbl/b.png\n")
    spec = load_spec({"root": str(tmp_path), "class_names": ["bg", "fg"], "channels": 1,
                      "splits": {"a": {"list": "ids.txt", "images": "img/{id}.png",
                                       "masks": "lbl/{id}.png"},
                                 "p": {"list": "pairs.txt", "images": "img/{id}.png"}}})
    assert [(s.id, s.image.name, s.mask.name) for s in spec.resolve("a")] == [
        ("my image", "my image.png", "my image.png"), ("b", "b.png", "b.png")]
    assert [(s.image.name, s.mask.name) for s in spec.resolve("p")] == [
        ("b.png", "c.png"), ("c.png", "b.png")]


# -- 23: messages --------------------------------------------------------------------------------

def test_data_stats_names_a_missing_split(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_tree(tmp_path)))
    result = CliRunner().invoke(cli, ["data", "stats", str(tmp_path / "spec.yaml"),
                                      "--split", "nosuch"])
    assert result.exit_code == 1
    assert str(result.exception) == "--split: no split 'nosuch' in dataset 'tiny' (have train)"


def test_a_missing_files_from_path_fails_alone(tmp_path, checkpoint):
    _png(tmp_path / "a.png", np.full((8, 8), 50))
    _png(tmp_path / "b.png", np.full((8, 8), 90))
    (tmp_path / "list.txt").write_text(f"{tmp_path}/a.png\n{tmp_path}/gone.png\n{tmp_path}/b.png\n")
    result = CliRunner().invoke(cli, ["predict", "-c", str(checkpoint), "--files-from",
                                      str(tmp_path / "list.txt"), "-o", str(tmp_path / "out"),
                                      "--no-progress", "--device", "cpu"])
    assert result.exit_code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [e["input"] for e in summary["images"]] == [f"{tmp_path}/a.png", f"{tmp_path}/b.png"]
    assert summary["failed"] == [{"input": f"{tmp_path}/gone.png",
                                  "error": f"{tmp_path}/gone.png: file not found"}]


def test_non_finite_pixels_are_refused(checkpoint):
    predictor = Predictor(checkpoint)
    image = np.full((8, 8), 0.5, np.float32)
    image[2, 3], image[4, 4] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"2 of 64 pixel values are not finite \(NaN or "
                                         r"infinite\); replace them"):
        predictor.predict(image)
    assert predictor.predict(np.nan_to_num(image, posinf=0.0)).mask.shape == (8, 8)
