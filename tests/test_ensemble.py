"""Ensembles (several -c, fold folders), stored post-processing applied, uncertainty maps and
their error-ranking AUROC."""
import json
import math

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pixelwise.data.preprocess import to_tensor
from pixelwise.errors import CheckpointError
from pixelwise.inference.ensemble import resolve_checkpoints
from pixelwise.inference.evaluate import evaluate
from pixelwise.inference.members import renormalise
from pixelwise.inference.postprocess import apply_postprocessing
from pixelwise.inference.predict import Predictor
from pixelwise.inference.raster import predict_raster
from pixelwise.inference.uncertainty import to_uint16
from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint, set_postprocess
from pixelwise.metrics.ranking import ErrorRanking, auroc_from_counts
from pixelwise.models import build_model

from common import default_conv_init

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(*args: str) -> str:
    """``pixelwise ARGS`` that must succeed; its output."""
    from click.testing import CliRunner

    from pixelwise.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output

UNET = dict(in_channels=3, num_classes=3, base_channels=4, depth=2)
NAMES = ["sky", "road", "car"]


def _random_net(path, names=NAMES, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3):
    """A random U-Net sharpened so that its masks have several classes and specks."""
    torch.manual_seed(seed)
    kwargs = {**UNET, "num_classes": len(names)}
    model = default_conv_init(build_model("unet", **kwargs), seed).eval()
    with torch.no_grad():
        model.head.weight.mul_(30.0)
        model.head.bias.zero_()
        model.head.bias.sub_(model(torch.randn(1, 3, 32, 32)).mean(dim=(0, 2, 3)))
    return save_checkpoint(path, model, "unet", kwargs, names, mean=mean, std=std)


def _constant_net(path, probs, names=NAMES[:2]):
    """A U-Net whose softmax is ``probs`` at every pixel (zero head weights, log-prob bias)."""
    model = build_model("unet", **{**UNET, "num_classes": len(probs)})
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor(probs, dtype=torch.float32)))
    return save_checkpoint(path, model, "unet", {**UNET, "num_classes": len(probs)}, names)


def _image(seed=1, size=(24, 20)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


# -- ensembles ---------------------------------------------------------------------------------

def test_ensemble_of_one_is_the_model_itself(tmp_path):
    ckpt = _random_net(tmp_path / "a.pt")
    image = _image()
    one = Predictor([ckpt]).predict(image)
    # the model's own softmax, computed here without the Predictor
    loaded = load_checkpoint(ckpt)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(to_tensor(image, loaded.mean, loaded.std)[None]), 1)
    np.testing.assert_allclose(one.probs, expected[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(one.mask, expected[0].argmax(0).numpy())
    assert len(np.unique(one.mask)) > 1  # a mask that could differ
    # tiles and test-time views as a single model, bit for bit; a fold folder of one the same
    options = dict(tile_size=16, overlap=0.5, tta=True, scales=(0.75, 1.0))
    single = Predictor(ckpt, **options).predict(image)
    (tmp_path / "run" / "fold0" / "checkpoints").mkdir(parents=True)
    ckpt.rename(tmp_path / "run" / "fold0" / "checkpoints" / "best.pt")
    folder = Predictor(resolve_checkpoints([tmp_path / "run"]).members, **options).predict(image)
    np.testing.assert_array_equal(folder.probs, single.probs)
    np.testing.assert_array_equal(folder.mask, single.mask)


def test_two_members_average_their_probabilities(tmp_path):
    a = _constant_net(tmp_path / "a.pt", [0.9, 0.1])
    b = _constant_net(tmp_path / "b.pt", [0.3, 0.7])
    for keep_loaded in (True, False):  # all in memory, or one member at a time
        pred = Predictor([a, b], uncertainty=True, keep_loaded=keep_loaded).predict(_image())
        np.testing.assert_allclose(pred.probs[:, 3, 5], [0.6, 0.4], atol=1e-6)
        assert (pred.mask == 0).all()
        # entropy of (0.6, 0.4) over log 2; variance: each class's (0.9, 0.3) has variance
        # 0.09, summed 0.18, over its largest value 1 - 1/2
        h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
        np.testing.assert_allclose(pred.entropy, h, atol=1e-6)
        np.testing.assert_allclose(pred.variance, 0.36, atol=1e-6)
    # B alone decides the other way: the average, not the first member, made the mask
    assert (Predictor(b).predict(_image()).mask == 1).all()


def test_each_member_normalises_its_own_input(tmp_path):
    a = Predictor(_random_net(tmp_path / "a.pt"))
    b = Predictor(_random_net(tmp_path / "b.pt", mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7)))
    image = _image()
    moved = renormalise(a.prepare(image)[None], a.members[0], b.members[0])
    np.testing.assert_allclose(moved[0].numpy(), b.prepare(image).numpy(), atol=1e-5)


def test_members_of_different_classes_are_one_line_error(tmp_path, capsys):
    from pixelwise.cli import main

    a = _random_net(tmp_path / "a.pt")
    b = _random_net(tmp_path / "b.pt", names=["sky", "road"])
    Image.fromarray(_image()).save(tmp_path / "x.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", str(a), "-c", str(b), str(tmp_path / "x.png"),
              "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert str(a) in lines[0] and str(b) in lines[0] and "class names" in lines[0]


def test_fold_folder_members_and_postprocessing(tmp_path):
    run = tmp_path / "run"
    specs = [{"classes": {"1": {"op": "largest"}}}, {"classes": {"2": {"op": "largest"}}}]
    for i in range(2):
        (run / f"fold{i}" / "checkpoints").mkdir(parents=True)
        _random_net(run / f"fold{i}" / "checkpoints" / "best.pt", seed=i)
        set_postprocess(run / f"fold{i}" / "checkpoints" / "best.pt", specs[i])
    (run / "fold10").mkdir()  # not a fold with a checkpoint: refused, named
    with pytest.raises(CheckpointError, match="fold10/checkpoints/best.pt: ensemble member"):
        resolve_checkpoints([run])
    (run / "fold10").rmdir()
    plain = resolve_checkpoints([run])  # no crossval.json: the folds, and no common spec
    assert plain.members == [run / "fold0/checkpoints/best.pt", run / "fold1/checkpoints/best.pt"]
    assert plain.postprocess is None and "do not all carry the same" in plain.note
    chosen = {"classes": {"1": {"op": "min_size", "min_size": 3}}}
    (run / "crossval.json").write_text(json.dumps(
        {"members": ["fold1/checkpoints/best.pt"], "postprocess": chosen}))
    cv = resolve_checkpoints([run])
    assert cv.members == [run / "fold1/checkpoints/best.pt"] and cv.postprocess == chosen
    single = resolve_checkpoints([run / "fold0/checkpoints/best.pt"])
    assert single.postprocess == specs[0]
    with pytest.raises(CheckpointError, match="must hold crossval.json or fold0"):
        resolve_checkpoints([tmp_path / "run" / "fold0"])


# -- post-processing ---------------------------------------------------------------------------

def test_stored_postprocessing_is_applied_by_predict_and_evaluate(tmp_path):
    ckpt = _random_net(tmp_path / "m.pt")
    images = [_image(seed) for seed in range(2)]
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    raw = Predictor(ckpt).predict_batch(images)
    for i, (image, pred) in enumerate(zip(images, raw)):
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(pred.mask).save(tmp_path / "lbl" / f"{i}.png")  # truth = raw masks
    spec = {"classes": {"1": {"op": "largest"}, "2": {"op": "largest"}}}
    processed = [apply_postprocessing(p.mask, spec) for p in raw]
    assert any((p != r.mask).any() for p, r in zip(processed, raw))  # specks to remove
    set_postprocess(ckpt, spec)

    _run("predict", "-c", ckpt, tmp_path / "img", "-o", tmp_path / "pp", "--no-progress")
    _run("predict", "-c", ckpt, tmp_path / "img", "-o", tmp_path / "off", "--no-progress",
         "--no-postprocess")
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pp" / f"{i}_mask.png")),
                                      processed[i])
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "off" / f"{i}_mask.png")),
                                      raw[i].mask)

    data = {"name": "t", "root": str(tmp_path), "class_names": NAMES,
            "splits": {"val": {"images": "img/*.png", "masks": "lbl/{name}"}}}
    result = evaluate([ckpt], data, "val", None, device="cpu", postprocess=spec)
    # the truth is the raw prediction: perfect without, short of it with post-processing
    assert result["without_postprocess"]["pixel_accuracy"] == 1.0
    changed = sum(int((p != r.mask).sum()) for p, r in zip(processed, raw))
    assert result["pixel_accuracy"] == pytest.approx(1 - changed / (2 * 24 * 20))
    assert result["postprocess"] == spec["classes"]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(data))
    out = _run("evaluate", "-c", ckpt, "-d", spec_file, "-o", tmp_path / "e")
    line = next(line for line in out.splitlines() if "pixel_accuracy:" in line)
    assert "post-processed" in out and line.split()[1:] == [f"{1 - changed / 960:.4f}", "1.0000"]
    written = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert written["without_postprocess"]["pixel_accuracy"] == 1.0


# -- uncertainty -------------------------------------------------------------------------------

def test_confident_model_has_zero_uncertainty(tmp_path):
    path = tmp_path / "huge.pt"  # huge logits: a softmax exactly one-hot in float32
    model = build_model("unet", **{**UNET, "num_classes": 2})
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 1000.0]))
    save_checkpoint(path, model, "unet", {**UNET, "num_classes": 2}, NAMES[:2])
    pred = Predictor([path, path], tta=True, uncertainty=True).predict(_image())
    assert (pred.mask == 1).all() and (pred.probs[1] == 1).all()
    assert (pred.entropy == 0).all() and (pred.variance == 0).all()
    Image.fromarray(_image()).save(tmp_path / "x.png")
    _run("predict", "-c", path, tmp_path / "x.png", "-o", tmp_path / "out", "--uncertainty",
         "--tta", "--no-progress")
    for name in ("x_entropy.png", "x_variance.png"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.mode.startswith("I") and im.size == (20, 24)
            assert not np.asarray(im).any()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"][0]["entropy"] == "x_entropy.png"


def test_uncertainty_files_hold_the_maps(tmp_path):
    ckpt = _random_net(tmp_path / "m.pt")
    image = _image(size=(40, 36))
    predictor = Predictor(ckpt, tta=True, uncertainty=True)
    pred = predictor.predict(image)
    assert 0 < pred.entropy.max() <= 1 and 0 < pred.variance.max() <= 1
    # a raster in one block with its whole context: the same maps, as uint16 GeoTIFF bands
    tifffile.imwrite(tmp_path / "scene.tif", image, tile=(16, 16))
    names = [tmp_path / "scene_entropy.tif", tmp_path / "scene_variance.tif"]
    predict_raster(predictor, tmp_path / "scene.tif", tmp_path / "scene_mask.tif",
                   block_size=256, margin=64, uncertainty=names)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "scene_mask.tif"), pred.mask)
    for path, values in zip(names, (pred.entropy, pred.variance)):
        written = tifffile.imread(path)
        assert written.dtype == np.uint16
        assert np.abs(written.astype(int) - to_uint16(values).astype(int)).max() <= 1


def test_auroc_by_hand():
    # errors at 0.8 and 0.35, correct pixels at 0.1 and 0.4: of the 4 pairs, the error is
    # the less sure in 3 (0.35 < 0.4 is the miss): 3/4
    target = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[1, 0, 0, 1, 3]])
    u = np.array([[0.8, 0.1, 0.35, 0.4, 1.0]])  # the ignored pixel would be an error at 1.0
    ranking = ErrorRanking(ignore_index=255)
    ranking.update(u, pred, target)
    assert ranking.auroc() == pytest.approx(0.75)
    assert ranking.summary()["error_pixels"] == 2
    # a tie counts one half: one more error at 0.4, one more correct pixel at 0.05; errors
    # (0.8, 0.35, 0.4) against correct (0.1, 0.4, 0.05): 3 + 2 + (2 + 1/2) of 9 pairs
    ranking.update(np.array([[0.4, 0.05]]), np.array([[1, 1]]), np.array([[0, 1]]))
    assert ranking.auroc() == pytest.approx(7.5 / 9)
    assert auroc_from_counts([0, 1], [1, 0]) == 1.0 and auroc_from_counts([1], [0]) is None


def test_evaluate_reports_auroc_of_a_confident_ensemble(tmp_path):
    """Two members that agree on one pixel set and not elsewhere: the ranking is known."""
    a = _constant_net(tmp_path / "a.pt", [0.9, 0.1])
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    Image.fromarray(_image()).save(tmp_path / "img" / "0.png")
    truth = np.zeros((24, 20), np.uint8)
    truth[:6] = 1  # a quarter of the pixels wrong, all at one uncertainty: AUROC 1/2
    Image.fromarray(truth).save(tmp_path / "lbl" / "0.png")
    data = {"name": "t", "root": str(tmp_path), "class_names": NAMES[:2],
            "splits": {"val": {"images": "img/*.png", "masks": "lbl/{name}"}}}
    result = evaluate([a, a], data, "val", None, device="cpu", uncertainty=True)
    assert result["uncertainty"]["entropy"] == {"auroc": 0.5, "error_pixels": 120,
                                                "correct_pixels": 360}
    assert result["uncertainty"]["variance"]["auroc"] == 0.5


@pytest.mark.slow  # two ONNX exports: about 25 s here
def test_onnx_members_average_like_checkpoints(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise.export import export_onnx

    a = _constant_net(tmp_path / "a.pt", [0.9, 0.1])
    b = _constant_net(tmp_path / "b.pt", [0.3, 0.7])
    files = [export_onnx(p, p.with_suffix(".onnx")) for p in (a, b)]
    pred = Predictor(files, backend="onnxruntime", uncertainty=True).predict(_image())
    np.testing.assert_allclose(pred.probs[:, 0, 0], [0.6, 0.4], atol=1e-6)
    np.testing.assert_allclose(pred.variance, 0.36, atol=1e-6)
    # on the command line, -c takes several .onnx files as well
    Image.fromarray(_image()).save(tmp_path / "x.png")
    _run("predict", "-c", files[0], "-c", files[1], tmp_path / "x.png", "-o", tmp_path / "out",
         "--no-progress")
    assert (np.asarray(Image.open(tmp_path / "out" / "x_mask.png")) == 0).all()
