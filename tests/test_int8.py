"""int8 export (ONNX Runtime static quantization): calibration on a tiny spec, parity and the
refusal over --max-drop, metadata kept, the int8 model through predict / evaluate, and
hostile inputs answered in one line.

One tiny U-Net is trained for a few steps on "blobs" (the foreground is where a blocky grey
field is bright), so that its val Dice is high and a damaged quantization visibly loses it.
The fp32 ONNX export (the slow step: the torch.export-based exporter) is done once per module
and handed to every export through ``pixelwise.export.onnx.onnx_bytes``.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.errors import ConfigError, DataError, PixelwiseError
from pixelwise.export import int8
from pixelwise.export import onnx as onnx_export
from pixelwise.inference.backend import read_onnx_metadata
from pixelwise.inference.evaluate import evaluate
from pixelwise.inference.predict import Predictor
from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

KWARGS = dict(in_channels=3, num_classes=2, base_channels=4, depth=2)


def write_blobs(root: Path, n_train: int = 6, n_val: int = 3, size: int = 32) -> Path:
    """Grey images of a blocky random field; the mask is where the field is positive."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            field = np.kron(rng.normal(size=(size // 4, size // 4)), np.ones((4, 4)))
            image = np.clip(128 + 60 * field, 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([image] * 3, -1)).save(root / split / f"{i}.png")
            Image.fromarray((field > 0).astype(np.uint8)).save(root / split / f"{i}_mask.png")
    spec = {"name": "blobs", "root": str(root), "class_names": ["background", "blob"],
            "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
            "mask": {"encoding": "indices"},
            "splits": {s: {"images": f"{s}/*.png", "masks": f"{s}/{{stem}}_mask.png"}
                       for s in ("train", "val")}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, spec path, fp32 ONNX bytes) of a U-Net trained on the blobs."""
    from pixelwise.data import SegmentationDataset

    root = tmp_path_factory.mktemp("blobs")
    spec = write_blobs(root)
    data = SegmentationDataset(spec, "train")
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.stack([data[i][1] for i in range(len(data))])
    torch.manual_seed(0)
    model = build_model("unet", **KWARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = save_checkpoint(root / "m.pt", model.eval(), "unet", KWARGS, ["background", "blob"],
                           mean=(0.5,) * 3, std=(0.25,) * 3, palette=[(0, 0, 0), (9, 9, 9)])
    return path, spec, onnx_export.onnx_bytes(load_checkpoint(path))


@pytest.fixture
def cached_fp32(trained, monkeypatch):
    """Exports reuse the module's fp32 graph instead of running the exporter again."""
    monkeypatch.setattr(onnx_export, "onnx_bytes", lambda *a, **k: trained[2])
    return trained


def test_calibration_images_are_spread_and_prepared_as_the_predictor_does(trained):
    assert int8.calibration_indices(10, 3) == [0, 4, 9]  # linspace 0, 4.5, 9 rounded
    assert int8.calibration_indices(3, 32) == [0, 1, 2]
    path, spec, _ = trained
    ckpt = load_checkpoint(path)
    dataset = int8.open_split(spec, "train", "calibrate on")
    inputs = int8.calibration_inputs(ckpt, dataset, 2)
    assert len(inputs) == 2 and inputs[0].shape == (1, 3, 32, 32)
    image, _ = dataset.read_raw(5)  # the last of 6: spread picks indices 0 and 5
    want = Predictor(ckpt).prepare(image)[None].numpy()
    np.testing.assert_array_equal(inputs[1], want)
    with pytest.raises(ConfigError, match="at least 1 image, got 0"):
        int8.calibration_inputs(ckpt, dataset, 0)
    # a valid-convolution U-Net is fed the mirrored border that prediction gives it
    from pixelwise.io.checkpoint import Checkpoint
    from pixelwise.models import geometry

    kwargs = {**KWARGS, "padding": "valid"}
    valid = Checkpoint(model=build_model("unet", **kwargs).eval(), model_name="unet",
                       model_kwargs=kwargs, class_names=["background", "blob"],
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    x = int8.calibration_inputs(valid, dataset, 1)[0]
    assert x.shape[-1] > 32
    assert geometry.output_shape(valid.model, *x.shape[-2:]) >= (32, 32)


def test_export_keeps_metadata_and_accuracy_and_runs_everywhere(cached_fp32, tmp_path):
    path, spec, fp32 = cached_fp32
    out, parity = int8.export_int8(path, tmp_path / "m.int8.onnx", spec, images=4)
    assert out == tmp_path / "m.int8.onnx" and out.is_file()
    # parity: Dice of the foreground class, points, on the 3 val images; the fp32 figure is
    # what evaluate gives the fp32 graph
    assert parity.metric == "blob Dice" and parity.images == 3
    fp32_result = evaluate(fp32, spec, "val", None)
    assert parity.fp32 == pytest.approx(100 * fp32_result["per_class"][1]["dice"])
    assert parity.fp32 > 85 and abs(parity.drop) < 1.0
    # metadata round trip: the int8 file carries the checkpoint's metadata
    assert read_onnx_metadata(out) == load_checkpoint(path).metadata()
    # really int8: weights stored as int8, the last convolution (int8.KEEP_FP32) left in fp32
    graph = onnx.load(str(out)).graph
    produced = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(convs) == 11 and len(int8_weights) >= 10  # all but the last (+ up-convolutions)
    assert produced.get(convs[-1].input[1]) is None  # an fp32 initializer, no DequantizeLinear
    assert all(produced.get(c.input[1]) == "DequantizeLinear" for c in convs[:-1])
    # evaluate and predict take it like any .onnx; evaluate's figure is the parity's
    result = evaluate(out, spec, "val", None)
    assert 100 * result["per_class"][1]["dice"] == pytest.approx(parity.int8)
    image_path = Path(spec).parent / "val" / "0.png"
    predictor = Predictor(out, backend="onnxruntime")
    mask = predictor.predict(np.asarray(Image.open(image_path))).mask
    truth = np.asarray(Image.open(Path(spec).parent / "val" / "0_mask.png"))
    assert mask.shape == (32, 32) and (mask == truth).mean() > 0.9
    # the command line's predict (backend auto: ONNX Runtime for .onnx) and the server
    from pixelwise.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", str(out), str(image_path), "-o", str(tmp_path / "preds")])
    assert exit_info.value.code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "preds" / "0_mask.png")),
                                  mask)
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():  # Starlette prefers another HTTP client package
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from pixelwise.serve import create_app

    with TestClient(create_app(predictor)) as client:
        answer = client.post("/predict", files={"file": ("0.png", image_path.read_bytes(),
                                                         "image/png")})
    assert answer.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))), mask)


def test_a_damaged_quantization_is_refused_unless_forced(cached_fp32, tmp_path, monkeypatch,
                                                         capsys):
    """Calibrated on black images, every activation range collapses: the int8 model loses
    well over 5 points of Dice (the test reads the figure from the refusal)."""
    from pixelwise.cli import main

    path, spec, _ = cached_fp32
    real = int8.calibration_inputs
    monkeypatch.setattr(int8, "calibration_inputs",
                        lambda *a, **k: [np.zeros_like(x) for x in real(*a, **k)])
    out = tmp_path / "bad.onnx"
    args = ["export", "-c", str(path), "--int8", "--calibrate", str(spec), "-o", str(out),
            "--images", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--max-drop", "5"])
    assert exit_info.value.code == 1 and not out.exists()
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("error: int8 export of 'unet' refused: it loses ")
    assert "points of blob Dice on split 'val', over max_drop 5 (--max-drop); nothing written" \
        in err
    drop = float(err.split("loses ")[1].split(" points")[0])
    assert drop > 5
    assert f"({-drop:+.2f} points)" in captured.out  # the parity line was printed first
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--max-drop", "5", "--force"])
    assert exit_info.value.code == 0 and out.is_file()
    assert "warning: written with --force" in capsys.readouterr().err
    # a limit above the loss passes without --force
    out.unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--max-drop", f"{drop + 1:.2f}"])
    assert exit_info.value.code == 0 and out.is_file()


def one_line_error(capsys, code: int, args: list[str]) -> str:
    from pixelwise.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == code, err
    assert "Traceback" not in err
    return err.splitlines()[-1]  # click's usage errors end with the "Error: ..." line


def test_hostile_inputs_get_one_line_errors(trained, tmp_path, capsys):
    path, spec, _ = trained
    out = str(tmp_path / "x.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx at all")
    # a non-ONNX file where a model is read; a file that is not a pixelwise checkpoint
    err = one_line_error(capsys, 1, ["predict", "-c", str(garbage), str(spec), "-o",
                                     str(tmp_path / "p")])
    assert "garbage.onnx" in err and "ONNX Runtime cannot load it" in err
    err = one_line_error(capsys, 1, ["evaluate", "-c", str(garbage), "-d", str(spec), "-o",
                                     str(tmp_path / "e")])
    assert "garbage.onnx" in err
    err = one_line_error(capsys, 1, ["export", "-c", str(garbage), "--int8", "--calibrate",
                                     str(spec), "-o", out])
    assert "garbage.onnx" in err and "not a readable checkpoint" in err
    # an ONNX model without pixelwise metadata
    foreign = onnx.load_from_string(trained[2])
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    err = one_line_error(capsys, 1, ["evaluate", "-c", str(tmp_path / "foreign.onnx"), "-d",
                                     str(spec), "-o", str(tmp_path / "e")])
    assert "foreign.onnx" in err and "not a pixelwise export" in err
    # --images 0; --int8 without a spec; a spec without --int8
    assert "--images" in one_line_error(capsys, 2, ["export", "-c", str(path), "--int8",
                                                    "--calibrate", str(spec), "--images", "0",
                                                    "-o", out])
    assert "--calibrate" in one_line_error(capsys, 2, ["export", "-c", str(path), "--int8",
                                                       "-o", out])
    assert "--int8" in one_line_error(capsys, 2, ["export", "-c", str(path), "--calibrate",
                                                  str(spec), "-o", out])
    assert not Path(out).exists()


def test_a_calibration_split_without_images_is_refused_before_any_work(trained, tmp_path,
                                                                       capsys):
    path, spec, _ = trained
    raw = yaml.safe_load(Path(spec).read_text())
    (tmp_path / "empty").mkdir()
    raw["splits"]["empty"] = {"images": str(tmp_path / "empty" / "*.png"), "masks": "{stem}.png"}
    # a holdout of one image's split leaves that split empty
    raw["splits"]["one"] = {"images": "train/0.png", "masks": "train/{stem}_mask.png"}
    raw["holdout"] = {"from": "one", "to": "held", "fraction": 0.5}
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match="split 'one' of dataset 'blobs' has no images: "
                                        "nothing to calibrate on"):
        int8.export_int8(path, tmp_path / "x.onnx", bad_spec, split="one")
    with pytest.raises(DataError, match="split 'one' .* nothing to score parity on"):
        int8.export_int8(path, tmp_path / "x.onnx", bad_spec, val_split="one")
    err = one_line_error(capsys, 1, ["export", "-c", str(path), "--int8", "--calibrate",
                                     str(bad_spec), "--split", "empty", "-o",
                                     str(tmp_path / "x.onnx")])
    assert err.endswith("empty/*.png: no images match (splits.empty.images)")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(PixelwiseError, match="calibration: unknown method 'median'"):
        int8.quantize_model(trained[2], [], "median")
