"""Run config: parsing, overrides, errors that name the key, dump/load, and every recipe."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixelwise.io.config import RunConfig, apply_overrides, dump_config, load_config
from pixelwise.errors import ConfigError

from common import shared_data

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
BASE = {"model": {"name": "unet"}, "data": {"spec": "spec.yaml"}}


def test_defaults_and_overrides_parse_values_as_yaml():
    cfg = load_config(raw=BASE, overrides=["optim.lr=1e-3", "train.amp=false",
                                           "model.kwargs.depth=3", "data.crop_size=[64, 96]",
                                           "data.val_split=null", "optim.name=adamw"])
    assert cfg.optim.lr == 0.001 and cfg.train.amp is False
    assert cfg.model.kwargs == {"depth": 3}
    assert cfg.data.crop_size == (64, 96) and cfg.data.val_split is None
    assert cfg.optim.name == "adamw"
    assert cfg.train.best_metric == "mean_iou" and cfg.optim.schedule == "poly"


def test_overrides_do_not_modify_the_input():
    raw = {"optim": {"lr": 1.0}}
    out = apply_overrides(raw, ["optim.lr=2", "train.epochs=3"])
    assert raw == {"optim": {"lr": 1.0}} and out == {"optim": {"lr": 2}, "train": {"epochs": 3}}


@pytest.mark.parametrize("override, key", [
    ("optim.lr=abc", "optim.lr"),
    ("optim.lrr=0.1", "optim.lrr"),
    ("train.epochs=0", "train.epochs"),
    ("optim.name=adam", "optim.name"),
    ("optim.schedule=step", "optim.schedule"),
    ("train.best_metric=accuracy", "train.best_metric"),
    ("model.name=segformer", "model.name"),
    ("model.kwargs.widht=3", "model.kwargs.widht"),
    ("augmentt.hflip=0.5", "augmentt"),
    ("data.crop_size=[1, 2, 3]", "data.crop_size"),
    ("train.device=gpu", "train.device"),
    ("output.name=a/b", "output.name"),
    ("loss.name=hinge", "loss.name"),
    ("loss.kwargs.gama=2", "loss.kwargs"),
    ("data.val_tile_size=512", "data.val_tile_size"),   # removed: it was never read
])
def test_bad_values_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(raw=BASE, overrides=[override])
    assert f"{key}:" in str(e.value)


def test_unknown_key_message_for_a_removed_key():
    with pytest.raises(ConfigError) as e:
        load_config(raw={**BASE, "data": {"spec": "s.yaml", "val_tile_size": 512}})
    assert str(e.value) == "config: invalid config: data.val_tile_size: unknown key"


def test_best_metric_is_a_summary_metric_or_the_val_loss():
    for name in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "dice", "val_loss"):
        assert load_config(raw=BASE, overrides=[f"train.best_metric={name}"]).train.best_metric \
            == name
    with pytest.raises(ConfigError, match="choose from dice, fw_iou, mean_accuracy, mean_iou, "
                                          "pixel_accuracy, val_loss"):
        load_config(raw=BASE, overrides=["train.best_metric=boundary_f1"])


@pytest.mark.parametrize("data, augment, expected", [
    ({"crop_size": 96}, None, (96, 96)),
    ({"crop_size": [64, 128]}, {"crop": [64, 128]}, (64, 128)),
    ({}, {"crop": 80}, (80, 80)),
    ({}, {"crop": [48, 32], "hflip": 0.5}, (48, 32)),
    ({}, {"hflip": 0.5}, None),
])
def test_train_crop_from_either_key(data, augment, expected):
    raw = {"model": {"name": "unet"}, "data": {"spec": "unused", **data}, "augment": augment}
    assert load_config(raw=raw).train_crop == expected


@pytest.mark.parametrize("crop_size, augment_crop, agrees", [
    (96, [96, 96], True), ([64, 128], [64, 128], True), (96, 96, True),
    (96, [96, 64], False), ([64, 128], 64, False),
])
def test_augment_crop_may_repeat_data_crop_size(crop_size, augment_crop, agrees):
    from pixelwise.training.setup import build_augment

    cfg = load_config(raw={"model": {"name": "unet"},
                           "data": {"spec": "unused", "crop_size": crop_size},
                           "augment": {"crop": augment_crop}})
    if agrees:
        build_augment(cfg, ignore_index=255)
    else:
        with pytest.raises(ConfigError, match=r"^augment\.crop: .* contradicts data\.crop_size"):
            build_augment(cfg, ignore_index=255)


def test_warmup_steps_and_epochs_are_exclusive():
    with pytest.raises(ConfigError, match="optim.warmup_epochs: give warmup_steps or"):
        load_config(raw=BASE, overrides=["optim.warmup_steps=5", "optim.warmup_epochs=1"])


def test_override_into_a_value_that_is_not_a_section():
    with pytest.raises(ConfigError, match="optim.lr is not a section"):
        load_config(raw={**BASE, "optim": {"lr": 0.1}}, overrides=["optim.lr.x=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(raw=BASE, overrides=["optim.lr"])


def test_missing_section_and_file(tmp_path):
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_config(raw={"model": {"name": "unet"}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_dump_and_reload_round_trip_and_default_run_name(tmp_path):
    path = tmp_path / "my_run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, ["optim.betas=[0.8, 0.9]"])
    assert cfg.output.name == "my_run"                    # the file's stem
    assert cfg.run_dir == Path("runs") / "my_run"
    dumped = tmp_path / "resolved.yaml"
    dump_config(cfg, dumped)
    again = load_config(dumped)
    assert again == cfg
    assert yaml.safe_load(dumped.read_text())["optim"]["betas"] == [0.8, 0.9]


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"fcn8s_camvid.yaml", "fcn8s_voc.yaml", "unet_isbi2012.yaml", "drive.yaml",
            "camvid.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(recipe):
    from pixelwise.data import load_spec
    from pixelwise.training.setup import build_augment
    from pixelwise.losses import build_loss

    cfg = load_config(recipe)
    assert isinstance(cfg, RunConfig) and cfg.output.name == recipe.stem
    # the parts the trainer builds from it also accept it
    build_loss(cfg.loss.name, **cfg.loss.kwargs)
    build_augment(cfg, ignore_index=255)
    spec = cfg.data.spec
    assert isinstance(spec, dict) and str(spec["root"]).startswith("../shared/data/")
    root = shared_data(Path(spec["root"]).name)
    assert root.resolve() == (REPO / spec["root"]).resolve()
    ds = load_spec({**spec, "root": str(root)})
    for split in (cfg.data.train_split, cfg.data.val_split):
        assert ds.resolve(split), split


def test_paper_settings_of_the_recipes():
    cfg = {p.stem: load_config(p) for p in RECIPES}
    unet = cfg["unet_isbi2012"]
    assert unet.model.kwargs["padding"] == "valid" and unet.optim.momentum == 0.99
    assert unet.loss.name == "unet_weighted_ce" and unet.augment["elastic"]
    # FCN paper (CamVid, batch 20 = 4 x 5) and the reference "at-once" VOC solver (batch 1,
    # "heavy" momentum, lr 1e-10 on a sum over ~1.9e5 pixels = 2e-5 on our per-pixel mean).
    paper = {"fcn8s_camvid": (0.9, 1e-4, 4, 5), "fcn8s_voc": (0.99, 2e-5, 1, 1)}
    for name, (momentum, lr, batch, accum) in paper.items():
        c = cfg[name]
        assert c.optim.name == "sgd" and c.optim.weight_decay == 5e-4
        assert (c.optim.momentum, c.optim.lr) == (momentum, lr), name
        assert (c.data.batch_size, c.optim.grad_accum) == (batch, accum), name
        assert (c.optim.bias_lr_factor, c.optim.bias_weight_decay) == (2.0, 0.0), name
        assert c.optim.schedule == "none"
        assert c.model.kwargs["learnable_upsampling"] is False


def test_cli_train_reports_a_bad_override_as_an_error_naming_the_key(tmp_path, capsys):
    from pixelwise.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(SystemExit) as e:
        main(["train", str(path), "--set", "optim.momentum=lots"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "optim.momentum:" in err


def test_cli_train_help_shows_examples():
    from click.testing import CliRunner

    from pixelwise.cli import cli

    out = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "pixelwise train recipes/" in out and "--set optim.lr=" in out
