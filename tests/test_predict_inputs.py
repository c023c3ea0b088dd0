"""Images smaller than the model's pooling grid (mirrored out and cropped back), and test-time
scales or predictor options this machine or model cannot honour: one-line errors for every
backend, never a traceback."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise import save_checkpoint
from pixelwise.cli import main
from pixelwise.inference.predict import Predictor
from pixelwise.errors import ConfigError
from pixelwise.models import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=3, base_channels=4, depth=3)  # needs 8 px
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model("unet", **kwargs), "unet", kwargs, ["a", "b", "c"])
    return path


@pytest.fixture(scope="module")
def onnx_file(checkpoint):
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx

    return export_onnx(checkpoint, checkpoint.with_suffix(".onnx"))


def image(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 100, dtype=np.uint8)


@pytest.mark.parametrize("source", ["checkpoint", "onnx_file", "checkpoint+ort"])
def test_small_images_padded_for_every_backend(source, request, checkpoint):
    path = request.getfixturevalue(source.split("+")[0])
    backend = "torch" if source == "checkpoint" else "onnxruntime"
    if source == "checkpoint+ort":  # a checkpoint on ONNX Runtime, exported in memory
        from pixelwise.cli.predict import choose_backend

        path, backend, _ = choose_backend(path, backend, fast=None)
    predictor = Predictor(path, backend=backend)
    assert predictor.min_input_size == 8
    # "Any size": a side under 8 px is mirrored out to 8 and the result cropped back. A constant
    # image mirrors to the same constant, so the small mask is the larger one's top-left.
    for h, w in [(1, 1), (7, 40), (3, 5)]:
        small = predictor.predict(image(h, w))
        big = predictor.predict(image(max(h, 8), max(w, 8)))
        assert small.mask.shape == (h, w) and small.probs.shape == (3, h, w)
        np.testing.assert_allclose(small.probs, big.probs[:, :h, :w], atol=1e-5)
    # Test-time scales shrinking an image the model takes below its input: named, refused.
    with pytest.raises(ValueError, match=r"scale 0.5 \(--scales\) turns the 10x10 image into "
                                         r"5x5, under the smallest input of unet \(8 pixels"):
        Predictor(path, backend=backend, scales=(0.5, 1.0)).predict(image(10, 10))


def test_onnx_cli_and_server_take_one_pixel(onnx_file, tmp_path):
    from fastapi.testclient import TestClient

    from pixelwise.serve import create_app

    Image.fromarray(image(1, 1)).save(tmp_path / "one_pixel.png")
    main_ok(["predict", "-c", str(onnx_file), str(tmp_path / "one_pixel.png"),
             "-o", str(tmp_path / "out"), "--no-progress"])
    assert Image.open(tmp_path / "out" / "one_pixel_mask.png").size == (1, 1)
    app = create_app(Predictor(onnx_file, backend="onnxruntime"), max_pixels=4096)
    with TestClient(app, raise_server_exceptions=False) as client:
        for h, w in [(1, 1), (8, 7)]:
            buf = io.BytesIO()
            Image.fromarray(image(h, w)).save(buf, format="PNG")
            r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
            assert r.status_code == 200, r.text


def main_ok(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code in (0, None)


def test_cli_names_the_scale_in_one_line(onnx_file, tmp_path, capsys):
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as e:
        main(["predict", "-c", str(onnx_file), str(tmp_path / "a.png"), "--scales", "0.01",
              "-o", str(tmp_path / "out"), "--no-progress"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ONNXRuntimeError" not in err
    line = next(line for line in err.splitlines() if "scale" in line)
    assert "a.png: scale 0.01 (--scales) turns the 64x64 image into 1x1" in line


def test_tile_size_and_device_checked_when_built(checkpoint):
    with pytest.raises(ConfigError, match="tile_size: 4 is too small for unet"):
        Predictor(checkpoint, tile_size=4)
    with pytest.raises(ConfigError, match="device:"):
        Predictor(checkpoint, device="cuda:7" if not torch.cuda.is_available() else "cuda:999")
    with pytest.raises(ConfigError, match="not a device"):
        Predictor(checkpoint, device="gpu0")
    assert Predictor(checkpoint, device="auto").predict(image(8, 8)).mask.shape == (8, 8)
