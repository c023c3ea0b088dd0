"""The planner: fingerprints of data with known content, the rules' choices, and a planned run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pixelwise.cli import cli
from pixelwise.io.config import load_config
from pixelwise.data.check import near_background
from pixelwise.training.plan import Fingerprint, fingerprint, plan, sqrt_weights

from common import shared_data


def write_known_dataset(root: Path, n: int = 3, shape: tuple[int, int] = (40, 64)) -> Path:
    """Images of constant colour (0.2, 0.4, 0.6) x 255; masks: top half class 0, bottom
    left quarter class 1, bottom right quarter class 2 -> frequencies 1/2, 1/4, 1/4."""
    h, w = shape
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image = np.empty((h, w, 3), np.uint8)
            image[:] = (51, 102, 153)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 2:, : w // 2] = 1
            mask[h // 2:, w // 2:] = 2
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    spec = {"name": "known", "root": ".", "class_names": ["bg", "a", "b"], "channels": 3,
            "mask": {"encoding": "indices"},
            "splits": {s: {"images": f"{s}/images/*.png", "masks": f"{s}/masks/{{name}}"}
                       for s in ("train", "val")}}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_fingerprint_of_known_data(tmp_path):
    fp = fingerprint(write_known_dataset(tmp_path))
    assert fp.num_images == 3 and fp.median_size == (40, 64) and fp.channels == 3
    assert fp.class_frequency == pytest.approx([0.5, 0.25, 0.25])
    assert fp.foreground_fraction == pytest.approx(0.5)
    # every class in every image: freq = pixel share; median 0.25 -> weights 0.5, 1, 1
    assert fp.class_weights == pytest.approx([0.5, 1.0, 1.0])
    assert fp.mean == pytest.approx([0.2, 0.4, 0.6], abs=1e-6)
    assert fp.std == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    # the foreground is the bottom half, 20 x 64 at the image's edge: its top two rows are
    # within 2 px of the background (the image border is not background)
    assert fp.thin_share == pytest.approx(2 / 20)


def test_near_background_counts_pixels_within_two_px_of_it():
    line = np.zeros((9, 30), np.int64)
    line[4, 3:27] = 1  # a vessel one pixel wide: all of it
    assert near_background(line, 255) == (24, 24)
    square = np.zeros((41, 41), np.int64)
    square[10:31, 10:31] = 1  # 21 x 21: a 2 px ring of 21^2 - 17^2 = 152 pixels
    assert near_background(square, 255) == (441, 152)
    square[10:31, 8:10] = 255  # ignored pixels are not foreground: the ring stays
    assert near_background(square, 255) == (441, 152)


def scene(**kw) -> Fingerprint:
    base = dict(num_images=367, median_size=(360, 480), channels=3, num_classes=11,
                class_frequency=[0.1] * 11, class_weights=[0.25, 1.0, 9.0, 4.0] + [1.0] * 7,
                foreground_fraction=0.9, mean=[0.4] * 3, std=[0.3] * 3)
    return Fingerprint(**{**base, **kw})


def test_scene_plan_resnet_concat_sqrt_weights_balanced_crops_hflip_only():
    raw = plan(scene(), {"preset": "camvid", "root": "/data"}, minutes=15)
    assert raw["model"]["name"] == "resnet34_unet_concat"
    assert raw["data"]["crop_size"] == 256 and raw["data"]["batch_size"] == 4
    assert raw["loss"] == {"name": "ce", "kwargs": {"class_weights":
                                                    [0.5, 1.0, 3.0, 2.0] + [1.0] * 7}}
    assert raw["augment"] == {"hflip": 0.5, "balanced_crop": 0.5}
    assert raw["optim"]["lr"] == 1.0e-3
    assert raw["train"]["max_minutes"] == 15.0
    assert raw["data"]["spec"] == {"preset": "camvid", "root": "/data", "mean": [0.4] * 3,
                                   "std": [0.3] * 3}


def test_binary_plan_unet_dice_ce_all_flips_and_crop_from_size():
    vessels = scene(num_classes=2, median_size=(584, 565), class_frequency=[0.91, 0.09],
                    class_weights=[0.55, 5.6], foreground_fraction=0.09)
    raw = plan(vessels, {"preset": "drive", "root": "/d"}, minutes=10)
    assert raw["model"] == {"name": "unet", "kwargs": {"base_channels": 16, "depth": 4,
                                                       "padding": "same", "batch_norm": True}}
    assert raw["loss"] == {"name": "dice_ce", "kwargs": {"mode": "multiclass"}}
    assert raw["augment"] == {"hflip": 0.5, "vflip": 0.5, "rotate90": True}
    assert raw["optim"]["lr"] == 2.0e-3  # the BatchNorm U-Net's
    assert raw["data"]["crop_size"] == 256
    # an hour buys the wider U-Net
    assert plan(vessels, {}, minutes=60)["model"]["kwargs"]["base_channels"] == 32
    # small grey images: crop = largest multiple of 32 in the short side; shallower U-Net
    grey = scene(channels=1, num_classes=4, median_size=(100, 140), mean=[0.5], std=[0.2])
    raw = plan(grey, {"root": "/g"}, minutes=5)
    assert raw["data"]["crop_size"] == 96
    assert raw["model"]["name"] == "unet" and raw["model"]["kwargs"]["depth"] == 2
    assert raw["loss"]["name"] == "ce"
    assert plan(scene(median_size=(40, 50)), {}, 1)["data"]["crop_size"] == 64


def test_pretrained_plan_runs_thin_structures_at_twice_the_resolution_on_half_crops():
    vessels = scene(num_classes=2, median_size=(584, 565), class_frequency=[0.91, 0.09],
                    class_weights=[0.55, 5.6], foreground_fraction=0.09, thin_share=0.79)
    raw = plan(vessels, {}, minutes=10, pretrained="efficientnet_lite0")
    assert raw["model"]["kwargs"] == {"pretrained": True, "input_scale": 2}
    assert raw["data"]["crop_size"] == 128
    assert raw["augment"] == {"hflip": 0.5, "vflip": 0.5, "rotate90": True, "balanced_crop": 1.0}
    assert raw["loss"] == {"name": "dice_ce", "kwargs": {"mode": "multiclass", "dice_weight": 0.5}}
    blobs = plan(scene(num_classes=2, thin_share=0.2), {}, 10, pretrained="efficientnet_lite0")
    assert blobs["model"]["kwargs"] == {"pretrained": True} and blobs["data"]["crop_size"] == 256
    assert "balanced_crop" not in blobs["augment"] and blobs["loss"]["kwargs"] == {"mode": "multiclass"}
    # scenes are never "thin", whatever their classes' shapes
    assert "input_scale" not in plan(scene(thin_share=0.9), {}, 10,
                                     pretrained="efficientnet_lite0")["model"]["kwargs"]


def test_sqrt_weights_keep_unseen_classes_at_zero():
    assert sqrt_weights([4.0, 0.0, 0.25]) == [2.0, 0.0, 0.5]


def test_planned_run_writes_a_config_that_reruns(tmp_path, monkeypatch, one_thread):
    # from scratch here (the pretrained plan: tests/test_pretrained.py)
    monkeypatch.setattr("pixelwise.training.plan.find_pretrained", lambda: None)
    spec = write_known_dataset(tmp_path / "data", n=4, shape=(64, 64))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--data", str(spec), "--minutes", "0.05",
                                      "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    assert "plan for known (4 training images, median 64x64, 3 classes" in result.output
    run = tmp_path / "runs" / "planned_known"
    fp = json.loads((run / "fingerprint.json").read_text())
    assert fp["class_frequency"] == pytest.approx([0.5, 0.25, 0.25])
    cfg = load_config(run / "config.yaml")
    assert cfg.model.name == "resnet34_unet_concat" and cfg.data.crop_size == 64
    assert cfg.train.max_minutes == 0.05
    assert (run / "checkpoints" / "best.pt").is_file()


def test_train_without_config_or_data_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["train"])
    assert result.exit_code == 2 and "--data SPEC" in result.output
    result = CliRunner().invoke(cli, ["train", "--data", "camvid", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "--minutes" in result.output


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe_name, name, pretrained", [
    ("camvid", "camvid", "efficientnet_lite0"), ("drive", "drive", "efficientnet_lite0"),
    ("camvid_scratch", "camvid", None), ("drive_scratch", "drive", None)])
def test_the_default_recipes_are_what_the_planner_plans(recipe_name, name, pretrained):
    # The recipes are the plans written out: a planned run on the shared data is the recipe,
    # with the ImageNet weights on the machine and (*_scratch) without.
    root = shared_data(name)
    recipe = load_config(REPO / "recipes" / f"{recipe_name}.yaml")
    fp = fingerprint({"preset": name, "root": str(root)})
    planned = load_config(raw=plan(fp, {"preset": name, "root": "../shared/data/" + name},
                                   recipe.train.max_minutes, pretrained=pretrained))
    for section in ("model", "augment", "optim", "loss"):
        assert getattr(planned, section) == getattr(recipe, section), section
    assert planned.data.model_dump() == recipe.data.model_dump()
    assert planned.train.max_minutes == recipe.train.max_minutes
    assert planned.train.val_every == recipe.train.val_every
