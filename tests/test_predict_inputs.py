"""Images smaller than the model's pooling grid, and predictor options this machine or model
cannot honour: one-line errors (422 from the server) for every backend, never a traceback."""
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
def test_too_small_for_every_backend(source, request, checkpoint):
    path = request.getfixturevalue(source.split("+")[0])
    backend = "torch" if source == "checkpoint" else "onnxruntime"
    if source == "checkpoint+ort":  # a checkpoint on ONNX Runtime, exported in memory
        from pixelwise.cli.predict import choose_backend

        path, backend, _ = choose_backend(path, backend, fast=None)
    predictor = Predictor(path, backend=backend)
    assert predictor.min_input_size == 8
    for h, w in [(1, 1), (7, 40)]:
        with pytest.raises(ValueError, match=rf"input {h}x{w} is too small for unet: each side "
                                             r"needs at least 8 pixels"):
            predictor.predict(image(h, w))
    assert predictor.predict(image(8, 16)).mask.shape == (8, 16)
    # Test-time scales shrink the image the model sees: checked there too.
    with pytest.raises(ValueError, match="too small"):
        Predictor(path, backend=backend, scales=(0.5, 1.0)).predict(image(10, 10))


def test_onnx_cli_and_server_refuse_in_one_line(onnx_file, tmp_path):
    from fastapi.testclient import TestClient

    from pixelwise.serve import create_app

    Image.fromarray(image(1, 1)).save(tmp_path / "one_pixel.png")
    with pytest.raises(SystemExit) as e:
        main(["predict", "-c", str(onnx_file), str(tmp_path / "one_pixel.png"),
              "-o", str(tmp_path / "out"), "--no-progress"])
    assert e.value.code == 1
    app = create_app(Predictor(onnx_file, backend="onnxruntime"), max_pixels=4096)
    with TestClient(app, raise_server_exceptions=False) as client:
        for h, w in [(1, 1), (8, 7)]:
            buf = io.BytesIO()
            Image.fromarray(image(h, w)).save(buf, format="PNG")
            r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
            assert r.status_code == 422 and "too small" in r.json()["error"], r.text


def test_cli_prints_one_line(onnx_file, tmp_path, capsys):
    Image.fromarray(image(1, 1)).save(tmp_path / "one_pixel.png")
    with pytest.raises(SystemExit):
        main(["predict", "-c", str(onnx_file), str(tmp_path / "one_pixel.png"),
              "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ONNXRuntimeError" not in err
    line = next(line for line in err.splitlines() if "too small" in line)
    assert "one_pixel.png: input 1x1 is too small for unet" in line


def test_tile_size_and_device_checked_when_built(checkpoint):
    with pytest.raises(ConfigError, match="tile_size: 4 is too small for unet"):
        Predictor(checkpoint, tile_size=4)
    with pytest.raises(ConfigError, match="device:"):
        Predictor(checkpoint, device="cuda:7" if not torch.cuda.is_available() else "cuda:999")
    with pytest.raises(ConfigError, match="not a device"):
        Predictor(checkpoint, device="gpu0")
    assert Predictor(checkpoint, device="auto").predict(image(8, 8)).mask.shape == (8, 8)
