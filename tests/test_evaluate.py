"""evaluate(): metrics.json against a hand-computed confusion matrix, and the report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pixelwise.io.checkpoint import save_checkpoint
from pixelwise.inference.evaluate import evaluate
from pixelwise.errors import ConfigError
from pixelwise.models import build_model


@pytest.fixture()
def tiny(tmp_path) -> tuple[Path, dict]:
    """Two 16x16 images; masks with known class counts and a 2x2 ignored block."""
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    rng = np.random.default_rng(0)
    m1 = np.zeros((16, 16), np.uint8)
    m1[8:] = 1                        # 128 px class 0, 128 px class 1
    m2 = np.zeros((16, 16), np.uint8)
    m2[0:4, 0:4] = 2                  # 16 px class 2
    m2[10:12, 10:12] = 9              # 4 px void -> ignored
    for name, m in (("a.png", m1), ("b.png", m2)):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / name)
        Image.fromarray(m).save(tmp_path / "lbl" / name)
    spec = {"name": "tiny", "root": str(tmp_path), "class_names": ["road", "car", "sky"],
            "mask": {"encoding": "indices", "ignore_values": [9]},
            "splits": {"val": {"images": "img/*.png", "masks": "lbl/{name}"}}}
    return tmp_path, spec


def _background_checkpoint(path: Path, num_classes: int = 3) -> Path:
    """A U-Net whose head predicts class 0 everywhere (zero weights, bias favouring 0)."""
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=num_classes, base_channels=2, depth=2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0] + [0.0] * (num_classes - 1)))
    save_checkpoint(path, model, "unet", {"in_channels": 3, "num_classes": num_classes,
                                          "base_channels": 2, "depth": 2},
                    ["road", "car", "sky"][:num_classes])
    return path


def test_metrics_match_hand_computed_confusion_matrix(tiny, tmp_path):
    root, spec = tiny
    run = tmp_path / "run"
    ckpt = _background_checkpoint(run / "checkpoints" / "best.pt")
    (run / "metrics.csv").write_text("epoch,step,lr,train_loss,val_loss,mean_iou\n"
                                     "1,4,0.01,1.2,1.3,0.2\n2,8,0.005,0.9,1.0,0.3\n")
    out = tmp_path / "eval"
    result = evaluate(ckpt, spec, "val", out, num_examples=1, num_worst=1)

    # truth rows: road 128 + 236 = 364 (all right), car 128 and sky 16 (all predicted road)
    assert result["confusion_matrix"] == [[364, 0, 0], [128, 0, 0], [16, 0, 0]]
    total = 508
    assert result["pixel_accuracy"] == pytest.approx(364 / total)
    assert result["mean_accuracy"] == pytest.approx(1 / 3)
    assert result["mean_iou"] == pytest.approx(364 / total / 3)
    assert result["fw_iou"] == pytest.approx(364 * (364 / total) / total)
    assert result["dice"] == pytest.approx(2 * 364 / (364 + total) / 3)
    rows = {r["class"]: r for r in result["per_class"]}
    assert rows["car"]["iou"] == 0 and rows["car"]["precision"] is None
    assert rows["road"]["pixels"] == 364
    # per image: a.png road IoU 128/256 and car 0 -> 0.25; b.png road 236/252, sky 0
    per = {Path(e["image"]).name: e["mean_iou"] for e in result["per_image"]}
    assert per == pytest.approx({"a.png": 0.25, "b.png": 236 / 252 / 2})

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["mean_iou"] == pytest.approx(result["mean_iou"])
    for png in ("confusion_matrix.png", "class_iou.png", "examples.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000, png
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Training curves" in page
    assert all(name in page for name in ("road", "car", "sky"))


def test_class_count_mismatch_is_a_config_error(tiny, tmp_path):
    _, spec = tiny
    ckpt = _background_checkpoint(tmp_path / "two.pt", num_classes=2)
    with pytest.raises(ConfigError, match="3 classes"):
        evaluate(ckpt, spec, "val", None)


def test_cli_evaluate_prints_metrics(tiny, tmp_path):
    import yaml

    from pixelwise.cli import cli

    _, spec = tiny
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    ckpt = _background_checkpoint(tmp_path / "m.pt")
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(ckpt), "--data",
                                   str(spec_file), "--output", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert f"pixel_accuracy: {364 / 508:.4f}" in res.output
    assert (tmp_path / "e" / "report.html").is_file()
    help_text = CliRunner().invoke(cli, ["evaluate", "--help"]).output
    assert "pixelwise evaluate --checkpoint" in help_text


def test_binary_model_on_two_class_data(tmp_path, monkeypatch):
    """A one-logit model predicting foreground everywhere; Hausdorff 95 is reported."""
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255                        # 64 px vessel among 256
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(mask).save(tmp_path / "lbl" / "a.png")
    spec = {"name": "bin", "root": str(tmp_path), "class_names": ["background", "vessel"],
            "mask": {"encoding": "value_map", "value_map": {0: 0, 255: 1}},
            "splits": {"val": {"images": "img/*.png", "masks": "lbl/{name}"}}}
    model = build_model("unet", in_channels=3, num_classes=1, base_channels=2, depth=2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(3.0)                # sigmoid(3) > 0.5: vessel everywhere
    ckpt = save_checkpoint(tmp_path / "bin.pt", model, "unet",
                           {"in_channels": 3, "num_classes": 1, "base_channels": 2, "depth": 2},
                           ["background", "vessel"])
    result = evaluate(ckpt, spec, "val", tmp_path / "out")
    assert result["confusion_matrix"] == [[0, 192], [0, 64]]
    assert result["pixel_accuracy"] == pytest.approx(64 / 256)
    assert result["per_class"][1]["iou"] == pytest.approx(64 / 256)
    # Hausdorff 95 of "vessel everywhere" against the 8 x 8 square at rows/cols 4..11, by hand.
    # The prediction fills the image, so its surface is the image's frame (60 pixels); the
    # truth's is the square's outline (28 pixels). Outline -> frame: every outline pixel is
    # 4 px from the nearest edge (row 4 is 4 from row 0, row 11 is 4 from row 15, and the
    # same for columns), so that P95 is 4. Frame -> outline: a frame pixel (0, c) is
    # sqrt(4^2 + d^2) from the square, d = how far c lies outside columns 4..11: 32 pixels
    # at 4 (d = 0), 8 each at sqrt(17), sqrt(20) and 5 (d = 1, 2, 3), the 4 corners at
    # sqrt(32). Sorted, the 95th percentile falls at position 0.95 x 59 = 56.05, between
    # values 56 and 57, both corners: sqrt(32). HD95 = max(4, sqrt(32)) = 4 sqrt(2).
    assert result["per_image"][0]["hausdorff95"] == pytest.approx(4 * math.sqrt(2))
    assert result["hausdorff95"] == pytest.approx(4 * math.sqrt(2))
    assert (tmp_path / "out" / "report.html").is_file()

    # an empty prediction has no surface: its distance is infinite, written as null
    from pixelwise.inference.predict import Prediction, Predictor

    def predicting(labels):  # the Predictor's masks replaced by ``labels``
        monkeypatch.setattr(Predictor, "predict",
                            lambda self, image: Prediction(mask=labels, probs=np.empty(0)))

    truth = (mask > 0).astype(np.int64)
    predicting(np.zeros_like(truth))
    result = evaluate(ckpt, spec, "val", tmp_path / "empty")
    assert result["per_image"][0]["hausdorff95"] is None and result["hausdorff95"] is None
    assert json.loads((tmp_path / "empty" / "metrics.json").read_text())["hausdorff95"] is None

    # The square shifted right by 2 px (columns 6..13), by hand. Predicted outline (28 px)
    # -> true outline: rows 4 and 11 at columns 6..11 lie on it (12 px at 0), columns 12
    # and 13 are 1 and 2 px past its corner (2 px each at 1 and 2); column 6, rows 5..10,
    # is 2 px from column 4 but rows 5 and 10 are 1 px from rows 4 and 11 (2 px at 1, 4 at
    # 2); column 13, rows 5..10, is 2 px from column 11 (6 px at 2). Sorted: 12 zeros,
    # 4 ones, 12 twos; P95 at 0.95 x 27 = 25.65 is a 2. The mirror image gives the same
    # the other way: HD95 = 2. Within 2 px every outline pixel matches (boundary F1 1); within
    # 1 px 16 of 28 do each way: precision = recall = 4/7, F1 = 4/7.
    shifted = np.zeros((16, 16), np.int64)
    shifted[4:12, 6:14] = 1
    predicting(shifted)
    result = evaluate(ckpt, spec, "val", None)
    assert result["per_class"][1]["iou"] == pytest.approx(48 / 80)
    assert result["hausdorff95"] == pytest.approx(2.0)
    assert result["boundary_f1"] == 1.0
    tight = evaluate(ckpt, spec, "val", None, boundary_tolerance=1)
    assert tight["boundary_f1"] == pytest.approx(4 / 7)
