"""Issue 22, part A: nothing lost and no traceback where the hostile probe found otherwise.

Outputs that would destroy an input or a user's file, output names that moved with the
input order, two runs in one run folder, deleted checkpoints, --opset, --device, non-finite
numbers, non-UTF-8 files, output folders that cannot be made, file modes and checkpoint
messages (the fuzz side of these is in tests/test_fuzz.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.errors import PixelwiseError
from test_predict import UNET3, _save, image

from common import listed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("c") / "unet3.pt", "unet", UNET3, ["sky", "road", "car"])


def _run(capsys, *args) -> tuple[int, str]:
    """Exit code and output (stderr, then stdout) of ``pixelwise ARGS``; never a traceback."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return e.value.code, captured.err + captured.out


def _predict(capsys, *args) -> tuple[int, str]:
    return _run(capsys, "predict", *args, "--no-progress", "--device", "cpu")


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image(h, w, seed=seed)).save(path)
    return path


# --- 1: an output is never one of the inputs -------------------------------------------------

def test_export_refuses_to_write_over_its_own_checkpoint(ckpt, tmp_path, capsys):
    before = ckpt.read_bytes()
    ckpt = tmp_path / "best.pt"  # a copy: the shared one must survive a failure here
    ckpt.write_bytes(before)
    for output in (ckpt, ckpt.parent / "." / ckpt.name):
        code, err = _run(capsys, "export", "-c", ckpt, "--format", "torchscript", "-o", output)
        assert code == 1 and "would destroy it" in err and len(err.strip().splitlines()) == 1
    assert ckpt.read_bytes() == before


def test_data_check_refuses_to_write_its_report_over_the_spec(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nroot: .\nclass_names: [a, b]\nsplits: {train: {images: '*.png', "
                    "masks: '{stem}_m.png'}}\n")
    before = spec.read_bytes()
    code, err = _run(capsys, "data", "check", spec, "--json", spec)
    assert code == 1 and "--json" in err and "would destroy it" in err
    assert spec.read_bytes() == before


def test_predict_refuses_an_output_that_is_one_of_its_inputs(ckpt, tmp_path, capsys):
    d = tmp_path / "d"
    _png(d / "a.png", 20, 24)
    _predict(capsys, d / "a.png", "-c", ckpt, "-o", d)  # d/a_overlay.png is pixelwise's now
    before = (d / "a_overlay.png").read_bytes()
    code, err = _predict(capsys, d / "a.png", d / "a_overlay.png", "-c", ckpt, "-o", d,
                         "--overwrite")
    assert code == 1 and "would be replaced by an output" in err
    assert (d / "a_overlay.png").read_bytes() == before


# --- 2: files pixelwise did not write are never replaced without --overwrite ----------------

def test_predict_keeps_ground_truth_and_user_files_in_the_output_folder(ckpt, tmp_path, capsys):
    d = tmp_path / "liver"
    _png(d / "000.png", 24, 24)
    truth = _png(d / "000_mask.png", 24, 24, seed=5).read_bytes()
    code, err = _predict(capsys, d / "000.png", "-c", ckpt, "-o", d)
    assert code == 1 and "000_mask.png" in err and "--overwrite" in err
    assert (d / "000_mask.png").read_bytes() == truth
    assert listed(d) == ["000.png", "000_mask.png"]  # nothing written, not even a summary
    # An unrelated file with an output's name is kept too; pixelwise's own outputs are not
    # the user's: a second run into the same folder replaces them without being told.
    out = tmp_path / "out"
    _png(out / "000_overlay.png", 8, 8, seed=7)
    assert _predict(capsys, d / "000.png", "-c", ckpt, "-o", out)[0] == 1
    assert np.asarray(Image.open(out / "000_overlay.png")).shape == (8, 8, 3)
    assert _predict(capsys, d / "000.png", "-c", ckpt, "-o", out, "--overwrite")[0] == 0
    assert _predict(capsys, d / "000.png", "-c", ckpt, "-o", out)[0] == 0
    assert np.asarray(Image.open(out / "000_overlay.png")).shape == (24, 24, 3)


def test_evaluate_refuses_to_replace_a_users_report_before_evaluating(ckpt, tmp_path):
    from pixelwise.inference.evaluate import evaluate

    (tmp_path / "report.html").write_text("mine")
    # the spec does not exist: the refusal comes first, before any data is read
    with pytest.raises(PixelwiseError, match="report.html.*--overwrite"):
        evaluate(ckpt, str(tmp_path / "no-spec.yaml"), "val", tmp_path)
    assert (tmp_path / "report.html").read_text() == "mine"


# --- 3: output names are a function of the input path, not of its place in the list ----------

def test_skip_existing_gives_every_image_its_own_mask(ckpt, tmp_path, capsys):
    from pixelwise.inference.batch import output_stem

    a1, a2 = _png(tmp_path / "d1" / "a.png", 64, 64), _png(tmp_path / "d2" / "a.png", 40, 48, 1)
    out = tmp_path / "o"
    assert _predict(capsys, a1, a2, "-c", ckpt, "-o", out)[0] == 0
    assert _predict(capsys, a2, a1, "-c", ckpt, "-o", out, "--skip-existing")[0] == 0
    sizes = {e["input"]: (e["height"], e["width"], e["mask"])
             for e in json.loads((out / "summary.json").read_text())["images"]}
    assert sizes == {str(a2): (40, 48, f"{output_stem(a2)}_mask.png"),
                     str(a1): (64, 64, f"{output_stem(a1)}_mask.png")}
    # A stem that was unique in an earlier run: the outputs are another input's, so
    # --skip-existing predicts it again instead of taking them.
    solo = tmp_path / "solo"
    assert _predict(capsys, a2, "-c", ckpt, "-o", solo)[0] == 0
    assert _predict(capsys, a1, "-c", ckpt, "-o", solo, "--skip-existing")[0] == 0
    (entry,) = json.loads((solo / "summary.json").read_text())["images"]
    assert (entry["height"], entry["width"]) == (64, 64)
    assert np.asarray(Image.open(solo / "a_mask.png")).shape == (64, 64)


# --- 4 and 5: the run folder ------------------------------------------------------------------

def _tiny_run(spec: Path, out: Path, **train) -> dict:
    return {"model": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}},
            "data": {"spec": str(spec), "batch_size": 2, "workers": 0, "crop_size": 24},
            "train": {"epochs": 1, "progress": False, "tensorboard": False, **train},
            "output": {"dir": str(out), "name": "run"}}


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    from pixelwise.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2,
                                   size=32, seed=1)


def test_a_second_run_into_a_locked_run_folder_says_who_holds_it(spec_path, tmp_path):
    from pixelwise.io.config import parse_config
    from pixelwise.training import runlog
    from pixelwise.training.train import train

    cfg = parse_config(_tiny_run(spec_path, tmp_path))
    held = runlog.lock_run_dir(cfg.run_dir)  # another open file: flock treats it as a rival
    try:
        for resume in (False, True):
            with pytest.raises(PixelwiseError, match=rf"in use by pid {os.getpid()} on \S+, "
                                                     r"started \d{4}-\d\d-\d\d"):
                train(cfg, resume=resume)
        assert not (cfg.run_dir / "checkpoints").exists()
    finally:
        held.close()
    assert train(cfg) == cfg.run_dir  # free again once the holder is gone


def test_overwrite_deletes_only_the_checkpoints_pixelwise_wrote(spec_path, tmp_path):
    from pixelwise.io.config import parse_config
    from pixelwise.training.train import train

    cfg = parse_config(_tiny_run(spec_path, tmp_path))
    train(cfg)
    mine = cfg.run_dir / "checkpoints" / "my_epoch50.pt"
    mine.write_bytes(b"the user's own checkpoint")
    train(parse_config({**_tiny_run(spec_path, tmp_path),
                        "output": {"dir": str(tmp_path), "name": "run", "overwrite": True}}))
    assert mine.read_bytes() == b"the user's own checkpoint"
    assert (cfg.run_dir / "checkpoints" / "last.pt").is_file()


def test_demo_refuses_to_replace_a_users_file_before_training(tmp_path):
    from pixelwise.training.demo import run_demo

    (tmp_path / "metrics.json").write_text("mine")
    with pytest.raises(PixelwiseError, match="metrics.json") as e:
        run_demo(tmp_path, epochs=1, n_train=4, n_val=2, size=32)
    assert "--overwrite" not in str(e.value)  # demo has no such flag
    assert (tmp_path / "metrics.json").read_text() == "mine"
    assert not (tmp_path / "data").exists()


# --- 10, 11, 16: options ----------------------------------------------------------------------

def test_export_opset_out_of_range_writes_nothing(ckpt, tmp_path, capsys):
    code, err = _run(capsys, "export", "-c", ckpt, "-o", tmp_path / "m.onnx", "--opset", "99")
    assert code == 2 and "--opset" in err and "99" in err
    assert not (tmp_path / "m.onnx").exists() and listed(tmp_path) == []


@pytest.mark.parametrize("args", [
    ["predict", "x.png", "-c", "x.pt", "-o", "o"],
    ["evaluate", "-c", "x.pt", "-o", "o"],
    ["serve", "-c", __file__],
    ["bench", "--fps", "v.mp4", "-c", "x.pt"],
])
def test_every_device_option_refuses_banana_in_one_line(args, capsys):
    code, err = _run(capsys, *args[:1], "--device", "banana", *args[1:])
    assert code == 2 and "'banana' is not a device" in err
    assert "--device" in err


def test_serve_takes_device_auto(ckpt, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    import pixelwise.serve

    served = {}
    monkeypatch.setattr(pixelwise.serve, "create_app",
                        lambda predictor, **kw: served.update(predictor=predictor) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    with pytest.raises(SystemExit) as e:
        main(["serve", "-c", str(ckpt), "--device", "auto"])
    assert e.value.code == 0 and served["app"] == "app"
    want = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(served["predictor"].device) == want


def test_minutes_inf_is_refused_before_the_run_folder_is_made(spec_path, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_tiny_run(spec_path, tmp_path / "runs")))
    code, err = _run(capsys, "train", config, "--minutes", "inf")
    assert code == 2 and "--minutes" in err and "finite" in err
    raw = _tiny_run(spec_path, tmp_path / "runs", max_minutes=float("inf"))
    config.write_text(yaml.safe_dump(raw))
    assert ".inf" in config.read_text()
    code, err = _run(capsys, "train", config)
    assert code == 1 and "train.max_minutes: must be a finite number" in err
    assert not (tmp_path / "runs").exists()


# --- 17: files that are not UTF-8 --------------------------------------------------------------

def test_a_run_config_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("model: {name: unet}  # café\n".encode("latin-1"))
    code, err = _run(capsys, "train", config)
    assert code == 1 and err.strip() == f"error: {config}: not a UTF-8 text file (byte 26 is " \
                                        f"not UTF-8)"


def test_a_list_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "val.txt").write_bytes(b"caf\xe9\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nroot: .\nclass_names: [a, b]\nsplits: {val: {list: val.txt, "
                    "images: '{id}.png', masks: '{id}_m.png'}}\n")
    code, err = _run(capsys, "data", "check", spec)
    assert code == 1 and f"{tmp_path / 'val.txt'}: not a UTF-8 text file" in err


def test_a_files_from_list_that_is_not_utf8_is_a_usage_error(ckpt, tmp_path, capsys):
    (tmp_path / "files.txt").write_bytes(b"caf\xe9.png\n")
    code, err = _predict(capsys, "--files-from", tmp_path / "files.txt", "-c", ckpt,
                         "-o", tmp_path / "o")
    assert code == 2 and "files.txt: not a UTF-8 text file" in err


# --- 18: output folders that cannot be made fail before the work -----------------------------

def test_outputs_under_a_file_fail_first(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _png(tmp_path / "a.png", 20, 24)
    cases = [["predict", tmp_path / "a.png", "-c", ckpt, "--device", "cpu", "--no-progress",
              "-o", blocker / "sub"],
             # the checkpoint and data do not exist: the output is checked before them
             ["evaluate", "-c", tmp_path / "none.pt", "-d", "none.yaml", "-o", blocker / "sub"],
             ["export", "-c", tmp_path / "none.pt", "-o", blocker / "sub" / "m.onnx"]]
    for args in cases:
        code, err = _run(capsys, *args)
        assert code == 1 and f"{blocker} is not a folder" in err, err


# --- 22: file modes follow the umask ---------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_and_raster_masks_follow_the_umask(ckpt, tmp_path, umask):
    import tifffile

    from pixelwise.inference.predict import Predictor
    from pixelwise.inference.raster import predict_raster
    from pixelwise.io.files import atomic_path, atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with atomic_path(tmp_path / "v.csv") as tmp:
            tmp.write_text("frame\n")
        tifffile.imwrite(tmp_path / "scene.tif", image(40, 40), photometric="rgb")
        predict_raster(Predictor(ckpt), tmp_path / "scene.tif", tmp_path / "scene_mask.tif")
    finally:
        os.umask(old)
    for name in ("a.bin", "v.csv", "scene_mask.tif"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --- 23: checkpoint messages, stale temporaries ----------------------------------------------

class _Refused:
    def __reduce__(self):
        return (os.system, ("echo never",))


@pytest.mark.parametrize("payload, name", [(_Refused(), "system"),
                                           (Path("x"), "pathlib.PosixPath")])
def test_a_refused_global_is_named(tmp_path, payload, name):
    from pixelwise.io.checkpoint import read_checkpoint

    torch.save({"state_dict": payload}, tmp_path / "evil.pt", pickle_protocol=2)
    with pytest.raises(PixelwiseError) as e:
        read_checkpoint(tmp_path / "evil.pt")
    assert "unsupported global was refused" in str(e.value) and name in str(e.value)
    assert "not a PyTorch file" not in str(e.value)


def test_empty_and_truncated_checkpoints_say_so_in_whole_sentences(ckpt, tmp_path):
    from pixelwise.io.checkpoint import read_checkpoint

    (tmp_path / "zero.pt").write_bytes(b"")
    data = ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name, words in (("zero.pt", "empty"), ("cut.pt", "truncated")):
        with pytest.raises(PixelwiseError) as e:
            read_checkpoint(tmp_path / name)
        message = str(e.value)
        assert words in message and "EOFError: )" not in message and message.endswith(")")
        assert message.count("(") == message.count(")")


def test_predict_clears_the_temporaries_a_killed_run_left(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    stale = [out / ".a_mask.png.k3x9_q2z.tmp", out / ".summary.json.0a1b2c3d.tmp"]
    other = out / ".notes.txt.abcdefgh.tmp"  # not a file this command writes: left alone
    for path in (*stale, other):
        path.write_bytes(b"torn")
    assert _predict(capsys, _png(tmp_path / "a.png", 20, 24), "-c", ckpt, "-o", out)[0] == 0
    assert not any(p.exists() for p in stale) and other.exists()

