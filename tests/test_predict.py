"""Predictor (tiling, TTA, thresholds, backends), file outputs, and huge-raster prediction."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.inference.batch import collect_inputs, predict_paths
from pixelwise.inference.predict import Predictor
from pixelwise.inference.raster import TiffRegionReader, predict_raster
from pixelwise.inference.tiling import mirror_pad
from pixelwise.errors import ConfigError, DataError
from pixelwise.models import build_model

from pixelwise.inference.batch import output_stem

from common import default_conv_init, listed


pytestmark = pytest.mark.usefixtures("one_thread")


UNET3 = dict(in_channels=3, num_classes=3, base_channels=4, depth=2)
VALID1 = dict(in_channels=1, num_classes=1, base_channels=4, depth=2, padding="valid",
              batch_norm=False)
PALETTE = [(10, 20, 30), (200, 0, 0), (0, 0, 250)]


def _save(path, name, kwargs, class_names, gain=30.0, **extra):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    c = kwargs["in_channels"]
    model.eval()
    default_conv_init(model)
    with torch.no_grad():  # a random net predicts one class everywhere: sharpen and centre it
        model.head.weight.mul_(gain)
        model.head.bias.zero_()
        logits = model(torch.randn(1, c, 64, 64))
        model.head.bias.sub_(logits.mean(dim=(0, 2, 3)))
    return save_checkpoint(path, model, name, kwargs, class_names, mean=(0.5,) * c,
                           std=(0.25,) * c, **extra)


@pytest.fixture(scope="module")
def ckpt3(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("c") / "unet3.pt", "unet", UNET3, ["sky", "road", "car"],
                 palette=PALETTE)


@pytest.fixture(scope="module")
def ckpt_binary(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("c") / "valid.pt", "unet", VALID1, ["membrane"], gain=100.0)


def image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def smooth_image(h, w, seed=0):
    """Noise blurred with a 9x9 box: regions, so predictions are regions rather than speckle."""
    x = torch.from_numpy(image(h, w, seed=seed)).permute(2, 0, 1)[None].float()
    return F.avg_pool2d(x, 9, 1, 4)[0].permute(1, 2, 0).numpy().astype(np.uint8)


def normalised(img, c=3):
    return ((torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)[None][:, :c]


def test_predict_whole_image(ckpt3):
    pred = Predictor(ckpt3)
    img = image(45, 61)
    out = pred.predict(img)
    model = load_checkpoint(ckpt3).model
    with torch.no_grad():
        want = model(normalised(img)).softmax(1)[0].numpy()
    assert out.mask.shape == (45, 61) and out.mask.dtype == np.uint8
    assert out.probs.shape == (3, 45, 61) and out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs, want, atol=1e-6)
    assert np.array_equal(out.mask, want.argmax(0))
    assert len(np.unique(out.mask)) >= 2  # the test model is not trivially constant
    assert pred.class_names == ["sky", "road", "car"] and pred.palette == PALETTE


def test_tiled_prediction_close_to_whole(ckpt3):
    img = smooth_image(90, 77)
    whole = Predictor(ckpt3).predict(img)
    tiled = Predictor(ckpt3, tile_size=48, overlap=0.5).predict(img)
    # Tile borders see zero padding instead of the neighbours: small, bounded differences.
    assert np.abs(tiled.probs - whole.probs).mean() < 5e-3
    # The test model's logits are sharpened 30x, so small differences flip near-ties
    # (measured: mean |dp| 0.0041, 94.5% of pixels agree).
    assert (tiled.mask == whole.mask).mean() > 0.9


def test_tta_flips_and_scales_average_probabilities(ckpt3):
    img = image(40, 52)
    x = normalised(img)
    model = load_checkpoint(ckpt3).model

    def probs(t):
        with torch.no_grad():
            return model(t).softmax(1)

    flips = (probs(x) + probs(x.flip(-1)).flip(-1) + probs(x.flip(-2)).flip(-2)) / 3
    np.testing.assert_allclose(Predictor(ckpt3, tta=True).predict(img).probs, flips[0].numpy(),
                               atol=1e-6)
    half = F.interpolate(x, size=(20, 26), mode="bilinear", align_corners=False)
    back = F.interpolate(probs(half), size=(40, 52), mode="bilinear", align_corners=False)
    scales = (back + probs(x)) / 2
    np.testing.assert_allclose(Predictor(ckpt3, scales=(0.5, 1.0)).predict(img).probs,
                               scales[0].numpy(), atol=1e-6)


def test_binary_threshold_and_valid_model(ckpt_binary):
    img = image(37, 50, c=1)
    low, high = Predictor(ckpt_binary, threshold=0.3), Predictor(ckpt_binary, threshold=0.7)
    a, b = low.predict(img), high.predict(img)
    assert low.class_names == ["background", "membrane"] and low.binary
    assert a.probs.shape == (1, 37, 50)
    assert np.array_equal(a.mask, (a.probs[0] >= 0.3).astype(np.uint8))
    assert np.array_equal(b.mask, (b.probs[0] >= 0.7).astype(np.uint8))
    assert 0 < b.mask.sum() < a.mask.sum() < a.mask.size
    # Valid convolutions: the whole image is mirrored outwards, a 20 px margin before it and
    # the rest after it, to the exact input sizes 80 x 92 (outputs 40 x 52; see
    # test_geometry.py); the paper's overlap-tile with pooling-aligned tiles gives the same.
    model = load_checkpoint(ckpt_binary).model
    with torch.no_grad():
        x = normalised(img, c=1)
        want = torch.sigmoid(model(mirror_pad(x, 20, 80 - 37 - 20, 20, 92 - 50 - 20)))
    np.testing.assert_allclose(a.probs, want[0, :, :37, :50].numpy(), atol=1e-5)
    tiled = Predictor(ckpt_binary, tile_size=64, overlap=0.25).predict(img)
    np.testing.assert_allclose(tiled.probs, a.probs, atol=1e-5)


def test_onnxruntime_backend_matches_torch(ckpt3, ckpt_binary, tmp_path):
    from pixelwise.export import export_onnx, onnx_bytes

    img = image(33, 47)
    ref = Predictor(ckpt3, tile_size=32).predict(img)
    exported = onnx_bytes(load_checkpoint(ckpt3))
    ort_pred = Predictor(exported, backend="onnxruntime", tile_size=32, threads=1).predict(img)
    assert ort_pred.probs.shape == (3, 33, 47)
    np.testing.assert_allclose(ort_pred.probs, ref.probs, atol=1e-5)
    # From an exported file, a valid-convolution model: sizes and names come from metadata.
    onnx_file = export_onnx(ckpt_binary, tmp_path / "m.onnx")
    from_file = Predictor(onnx_file, backend="onnxruntime", threshold=0.4, tile_size=64,
                          threads=1)
    assert from_file.class_names == ["background", "membrane"] and from_file.binary
    gray = image(41, 30, c=1)
    want = Predictor(ckpt_binary, threshold=0.4, tile_size=64).predict(gray)
    got = from_file.predict(gray)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
    assert np.array_equal(got.mask, want.mask)


def test_predict_batch_matches_single(ckpt3):
    pred = Predictor(ckpt3, fast=True)
    imgs = [image(32, 40, seed=1), image(20, 24, seed=2), image(32, 40, seed=3)]
    single = Predictor(ckpt3)
    for got, img in zip(pred.predict_batch(imgs), imgs):
        want = single.predict(img)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="'tensorrt' is not a backend"):
        Predictor("x.pt", backend="tensorrt")
    with pytest.raises(ValueError, match="threshold"):
        Predictor("x.pt", threshold=2)


def test_backend_is_chosen_explicitly(ckpt3, tmp_path):
    """An .onnx file no longer overrides backend, fast and compile: a contradiction is a
    one-line ConfigError naming it (and a usage error, exit 2, from the CLI)."""
    from pixelwise.cli import main
    from pixelwise.export import export_onnx

    onnx_file = export_onnx(ckpt3, tmp_path / "m.onnx", verify=False)
    with pytest.raises(ConfigError, match=r"m.onnx is an exported ONNX model: it runs on "
                                          r"backend 'onnxruntime', not 'torch'"):
        Predictor(onnx_file)
    for option in ("fast", "compile"):
        with pytest.raises(ConfigError, match="fast and compile are options of the torch"):
            Predictor(onnx_file, backend="onnxruntime", **{option: True})
    with pytest.raises(ConfigError, match="unet3.pt is a checkpoint: backend 'onnxruntime' "
                                          "runs exported models"):
        Predictor(ckpt3, backend="onnxruntime")
    Image.fromarray(image(16, 16)).save(tmp_path / "a.png")
    for extra in (["--backend", "torch"], ["--fast"], ["--optimize"]):  # --optimize: old name
        with pytest.raises(SystemExit) as e:
            main(["predict", "-c", str(onnx_file), str(tmp_path / "a.png"), "-o",
                  str(tmp_path / "o"), "--no-progress", *extra])
        assert e.value.code == 2
    assert not (tmp_path / "o").exists()
    # auto: the file's own backend, with torch's default --fast left off
    with pytest.raises(SystemExit) as e:
        main(["predict", "-c", str(onnx_file), str(tmp_path / "a.png"), "-o",
              str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 0
    want = Predictor(onnx_file, backend="onnxruntime").predict(image(16, 16)).mask
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "a_mask.png")), want)


def test_predict_paths_writes_masks_overlays_probs_summary(ckpt3, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(image(30, 40, seed=1)).save(src / "a.png")
    Image.fromarray(image(25, 33, seed=2)).save(src / "b.png")
    Image.fromarray(image(25, 33, seed=3)).save(src / "sub" / "a.png")  # same stem elsewhere
    (src / "notes.txt").write_text("not an image")
    assert [p.name for p in collect_inputs([src])] == ["a.png", "b.png"]
    pred = Predictor(ckpt3)
    out = tmp_path / "out"
    summary = predict_paths(pred, [src, str(src / "sub" / "*.png")], out, save_probs=True)

    assert [e["mask"] for e in summary["images"]] == [
        f"{output_stem(src / 'a.png')}_mask.png", "b_mask.png",
        f"{output_stem(src / 'sub' / 'a.png')}_mask.png"]
    first = summary["images"][0]
    mask_png = Image.open(out / first["mask"])
    assert mask_png.mode == "P"
    assert mask_png.getpalette()[:9] == [v for c in PALETTE for v in c]
    assert json.loads(mask_png.info["pixelwise:class_names"]) == ["sky", "road", "car"]
    want = pred.predict(np.asarray(Image.open(src / "a.png")))
    assert np.array_equal(np.asarray(mask_png), want.mask)
    np.testing.assert_allclose(np.load(out / first["probs"]), want.probs)
    assert np.asarray(Image.open(out / first["overlay"])).shape == (30, 40, 3)
    counts = np.bincount(want.mask.ravel(), minlength=3)
    assert [first["classes"][n]["pixels"] for n in ("sky", "road", "car")] == counts.tolist()
    assert first["classes"]["road"]["fraction"] == pytest.approx(counts[1] / 1200)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert sum(v["pixels"] for v in summary["total"].values()) == 1200 + 2 * 25 * 33

    predict_paths(pred, [src / "b.png"], tmp_path / "t", save_probs=True, probs_format="tiff16")
    probs16 = tifffile.imread(tmp_path / "t" / "b_probs.tif")
    assert probs16.dtype == np.uint16 and probs16.shape == (3, 25, 33)
    with pytest.raises(DataError, match="nothing_here"):
        predict_paths(pred, [tmp_path / "nothing_here*.png"], out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder holds no images"):
        collect_inputs([tmp_path / "empty"])


# -- huge rasters -------------------------------------------------------------------------------

GEO = [(33550, 12, 3, (0.5, 0.5, 0.0), True),
       (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
       (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
       (34737, 2, 0, "WGS 84 / UTM zone 33N|", True)]


@pytest.mark.parametrize("layout", [dict(tile=(64, 64), compression="zlib"),
                                    dict(rowsperstrip=7, compression="zlib"), dict()])
def test_region_reader_reads_exact_regions(tmp_path, layout):
    a = image(300, 261)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb", **layout)
    with TiffRegionReader(tmp_path / "a.tif") as reader:
        assert (reader.height, reader.width, reader.channels) == (300, 261, 3)
        for y0, y1, x0, x1 in [(0, 300, 0, 261), (-5, 70, 60, 130), (63, 65, 63, 200),
                               (250, 400, 250, 400)]:
            np.testing.assert_array_equal(reader.read(y0, y1, x0, x1),
                                          a[max(y0, 0):y1, max(x0, 0):x1])


def test_raster_prediction_tiles_and_georeferencing(ckpt3, tmp_path):
    a = smooth_image(300, 261)
    tifffile.imwrite(tmp_path / "scene.tif", a, tile=(64, 64), compression="zlib",
                     photometric="rgb", extratags=GEO)
    pred = Predictor(ckpt3)
    calls = []
    predict_raster(pred, tmp_path / "scene.tif", tmp_path / "mask.tif", block_size=128, tile=64,
                   progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (9, 9)
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
        assert page.shape == (300, 261) and page.dtype == np.uint8
        assert page.photometric == 3  # palette
        assert [tuple(c) for c in (page.colormap[:, :3].T // 257)] == PALETTE
        for code, _, _, value, _ in GEO:
            got = page.tags[code].value
            assert (got == value) if isinstance(value, str) else tuple(got) == pytest.approx(value)
        mask = page.asarray()
    whole = pred.predict(a).mask
    assert len(np.unique(whole)) >= 2
    # Each block is read with 64 px of real context, more than this net's receptive field.
    assert (mask == whole).mean() > 0.999


def test_raster_rejects_missing_file(ckpt3, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        predict_raster(Predictor(ckpt3), tmp_path / "none.tif", tmp_path / "m.tif")


HUGE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, tifffile
    from pixelwise.inference.predict import Predictor
    from pixelwise.inference.raster import predict_raster
    src, dst, ckpt, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ramp = (np.arange(512, dtype=np.uint16)[:, None] + np.arange(512)[None, :]) % 256
    tile = np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=-1)
    n = (-(-size // 512)) ** 2
    tifffile.imwrite(src, (tile for _ in range(n)), shape=(size, size, 3), dtype=np.uint8,
                     tile=(512, 512), photometric="rgb", bigtiff=True,
                     extratags=[(33550, 12, 3, (1.0, 1.0, 0.0), True)])
    predict_raster(Predictor(ckpt), src, dst, block_size=1024)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across execve.
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(int(status["VmHWM"].split()[0]) / 1024)
""")


@pytest.mark.slow
def test_huge_raster_peak_memory_under_2gb(tmp_path):
    """A 20,000 x 20,000 RGB TIFF (1.2 GB of pixels) predicted with peak RSS < 2 GB."""
    ckpt = _save(tmp_path / "tiny.pt", "unet",
                 dict(in_channels=3, num_classes=2, base_channels=2, depth=1), ["bg", "fg"])
    proc = subprocess.run([sys.executable, "-c", HUGE_SCRIPT, str(tmp_path / "big.tif"),
                           str(tmp_path / "mask.tif"), str(ckpt), "20000"],
                          capture_output=True, text=True, check=True)
    peak_mb = float(proc.stdout.split()[-1])
    print(f"20,000 x 20,000 raster: peak RSS {peak_mb:.0f} MB")  # shown with -s
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        page = tif.pages.first
        assert page.shape == (20000, 20000) and page.is_tiled
        assert tuple(page.tags[33550].value) == (1.0, 1.0, 0.0)


def test_cli_predict_images_and_raster(ckpt3, tmp_path, capsys):
    from pixelwise.cli import main

    Image.fromarray(image(30, 40)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "scene.tif", smooth_image(100, 90), tile=(32, 32),
                     photometric="rgb", extratags=GEO)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(ckpt3), str(tmp_path / "*.png"),
              str(tmp_path / "scene.tif"), "--raster", "--block-size", "64", "--output",
              str(out), "--tile-size", "32", "--tta", "--probs", "--no-progress"])
    assert exit_info.value.code == 0
    assert set(listed(out)) == {"a_mask.png", "a_overlay.png", "a_probs.npy",
                                              "summary.json", "scene_mask.tif"}
    want = Predictor(ckpt3, tile_size=32, tta=True, fast=True).predict(
        np.asarray(Image.open(tmp_path / "a.png")))
    assert np.array_equal(np.asarray(Image.open(out / "a_mask.png")), want.mask)
    with tifffile.TiffFile(out / "scene_mask.tif") as tif:
        assert tuple(tif.pages.first.tags[33550].value) == (0.5, 0.5, 0.0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", str(ckpt3), str(tmp_path / "missing.png"), "-o", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.png" in err
