"""evaluate(): metrics.json against a hand-computed confusion matrix, and the report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pixelwise.checkpoint import save_checkpoint
from pixelwise.engine.evaluate import evaluate
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
    import pixelwise.engine.evaluate as ev
    from pixelwise.metrics import hausdorff95

    truth = (mask > 0).astype(np.int64)
    everywhere = hausdorff95(np.ones_like(truth), truth)
    assert result["per_image"][0]["hausdorff95"] == result["hausdorff95"] == everywhere
    assert (tmp_path / "out" / "report.html").is_file()

    # an empty prediction has no surface: its distance is infinite, written as null
    monkeypatch.setattr(ev, "_mask_predictor",
                        lambda *a, **k: (lambda image: np.zeros_like(truth)))
    result = evaluate(ckpt, spec, "val", tmp_path / "empty")
    assert result["per_image"][0]["hausdorff95"] is None and result["hausdorff95"] is None
    assert json.loads((tmp_path / "empty" / "metrics.json").read_text())["hausdorff95"] is None

    # the square shifted right by 2 px: every surface point lies within 2 px of the other

    shifted = np.zeros((16, 16), np.int64)
    shifted[4:12, 6:14] = 1
    monkeypatch.setattr(ev, "_mask_predictor", lambda *a, **k: (lambda image: shifted))
    result = evaluate(ckpt, spec, "val", None)
    assert result["per_class"][1]["iou"] == pytest.approx(48 / 80)
    assert result["hausdorff95"] == pytest.approx(hausdorff95(shifted, truth))
    assert 0 < result["hausdorff95"] <= 2
    assert result["boundary_f1"] == 1.0              # every boundary pixel within 2 px
    assert evaluate(ckpt, spec, "val", None, boundary_tolerance=1)["boundary_f1"] < 1
