"""preflight(cfg): values that validate but would fail at run time are refused first,
in one line naming the dotted key, without making the run folder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixelwise.io.config import load_config
from pixelwise.devices import device_problem
from pixelwise.training.preflight import preflight
from pixelwise.errors import ConfigError


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    from pixelwise.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2,
                                   size=32, seed=1)


def config(spec: Path, out: Path, *overrides: str):
    raw = {
        "model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
        "data": {"spec": str(spec), "batch_size": 2, "workers": 0, "crop_size": 24},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 1, "progress": False, "device": "cpu"},
        "output": {"dir": str(out / "runs"), "name": "run"},
    }
    return load_config(raw=raw, overrides=list(overrides))


def refused(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_good_config_passes_and_makes_no_folder(spec_path, tmp_path):
    preflight(config(spec_path, tmp_path))
    preflight(config(spec_path, tmp_path, "model.name=fcn8s", "model.kwargs={}",
                     "data.crop_size=8"))
    preflight(config(spec_path, tmp_path, "model.kwargs.padding=valid", "data.crop_size=8"))
    assert not (tmp_path / "runs").exists()


def test_unet_too_deep_for_the_crop(spec_path, tmp_path):
    message = refused(config(spec_path, tmp_path, "model.kwargs.depth=9", "data.crop_size=128"))
    assert message.startswith("data.crop_size: 128x128") and "512 pixels" in message
    message = refused(config(spec_path, tmp_path, "data.crop_size=null", "augment.crop=[8, 2]"))
    assert message.startswith("augment.crop: 8x2") and "4 pixels" in message


def test_batchnorm_with_one_value_per_channel(spec_path, tmp_path):
    # depth 2 on 4 px crops leaves a 1x1 bottleneck: a batch of one cannot be normalised.
    message = refused(config(spec_path, tmp_path, "data.crop_size=4", "data.batch_size=1"))
    assert message.startswith("data.batch_size: 1 x 4x4")


def test_missing_or_unknown_device(spec_path, tmp_path):
    if not torch.cuda.is_available():
        message = refused(config(spec_path, tmp_path, "train.device=cuda:7"))
        assert message.startswith("train.device:") and "CUDA is not available" in message
    else:
        message = refused(config(spec_path, tmp_path,
                                 f"train.device=cuda:{torch.cuda.device_count()}"))
        assert message.startswith("train.device:") and "CUDA device(s)" in message
    assert device_problem("cpu") is None and device_problem("auto") is None
    assert "not a device" in device_problem("cuda:x")


def test_data_spec_and_splits(spec_path, tmp_path):
    assert refused(config(spec_path, tmp_path, "data.val_split=test")).startswith(
        "data.val_split: no split 'test'")
    assert refused(config(tmp_path / "nope.yaml", tmp_path)).startswith("data.spec:")
    assert refused(config(spec_path, tmp_path, "data.crop_size=0")).startswith("data.crop_size")
    assert refused(config(spec_path, tmp_path, "augment.flip=0.5")).startswith("augment.flip")


def test_model_arguments_and_weights(spec_path, tmp_path):
    assert refused(config(spec_path, tmp_path, "model.kwargs.upsample=nearest")).startswith(
        "model.kwargs: cannot build 'unet'")
    message = refused(config(spec_path, tmp_path, "model.name=resnet34_unet", "model.kwargs={}",
                             f"model.kwargs.pretrained={tmp_path}/missing.pth"))
    assert message.startswith("model.kwargs.pretrained:") and "not found" in message


def test_loss_that_does_not_fit_the_outputs(spec_path, tmp_path):
    # The synthetic data has 4 classes: 2 class weights or a binary loss cannot work.
    message = refused(config(spec_path, tmp_path, "loss.kwargs.class_weights=[1, 2]"))
    assert message.startswith("loss: 'ce' does not fit a model with 4 output channel(s)")
    assert refused(config(spec_path, tmp_path, "loss.name=bce")).startswith("loss: 'bce'")


def test_optimiser_arguments_torch_refuses(spec_path, tmp_path):
    assert refused(config(spec_path, tmp_path, "optim.name=adamw",
                          "optim.betas=[1.5, 0.9]")).startswith("optim.betas")
    assert refused(config(spec_path, tmp_path, "optim.nesterov=true",
                          "optim.momentum=0")).startswith("optim.nesterov")


def test_output_dir_that_cannot_hold_a_run(spec_path, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = config(spec_path, tmp_path, f"output.dir={tmp_path}/file/runs")
    assert refused(cfg).startswith(f"output.dir: {tmp_path}/file is a file")
