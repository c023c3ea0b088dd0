"""A checkpoint is checked against the model it describes when it is loaded, once, for every
consumer (predict, export, evaluate, serve); refusals are one line without unsafe advice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.io.checkpoint import load_checkpoint, make_checkpoint, read_checkpoint
from pixelwise.cli import main
from pixelwise.errors import CheckpointError
from pixelwise.models import build_model

KWARGS = dict(in_channels=3, num_classes=4, base_channels=4, depth=2)


def saved(tmp_path, name="c.pt", **changes):
    ckpt = make_checkpoint(build_model("unet", **KWARGS), "unet", KWARGS,
                           ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3)
    ckpt.update(changes)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def test_class_names_that_contradict_the_outputs(tmp_path, capsys):
    path = saved(tmp_path, class_names=["a", "b"])
    with pytest.raises(CheckpointError, match=r"c.pt: 2 class name\(s\) \(a, b\) for a model "
                                              r"with 4 outputs"):
        load_checkpoint(path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    for argv in (["predict", "-c", str(path), str(tmp_path / "x.png"), "-o", str(tmp_path / "o")],
                 ["export", "-c", str(path), "-o", str(tmp_path / "m.onnx")]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 1 and "4 outputs" in one_line_error(capsys)
    assert not (tmp_path / "o" / "summary.json").exists() and not (tmp_path / "m.onnx").exists()
    load_checkpoint(saved(tmp_path, "ok.pt"))


def test_binary_model_takes_one_or_two_names(tmp_path):
    kwargs = dict(KWARGS, num_classes=1)
    for names in (["vessel"], ["background", "vessel"]):
        ckpt = make_checkpoint(build_model("unet", **kwargs), "unet", kwargs, names,
                               (0.5,) * 3, (0.25,) * 3)
        torch.save(ckpt, tmp_path / "b.pt")
        assert load_checkpoint(tmp_path / "b.pt").class_names == names


def test_normalisation_that_contradicts_the_input_channels(tmp_path):
    path = saved(tmp_path, normalization={"mean": [0.5], "std": [0.25]})
    with pytest.raises(CheckpointError, match="does not take the 1-channel images"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="std > 0"):
        read_checkpoint(saved(tmp_path, normalization={"mean": [0.5] * 3, "std": [0.0] * 3}))


@pytest.mark.parametrize("field,value", [("class_names", "abcd"), ("model", {"name": 3}),
                                         ("state_dict", [1]), ("palette", [[1, 2]])])
def test_malformed_fields_are_named(tmp_path, field, value):
    with pytest.raises(CheckpointError, match=f"malformed checkpoint: '{field}'"):
        read_checkpoint(saved(tmp_path, **{field: value}))


class Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_with_python_objects_gets_no_advice_to_unpickle_it(tmp_path):
    path = saved(tmp_path, config={"x": Hostile()})
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    message = str(e.value)
    assert "weights_only" not in message and "trust" not in message and "\n" not in message
    assert "c.pt: not a pixelwise checkpoint: it holds a Python object (print)" in message


def test_state_dict_mismatch_in_a_few_words(tmp_path):
    state = build_model("unet", **KWARGS).state_dict()
    state = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    path = saved(tmp_path, state_dict=state)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400 + len(str(path))
    half = len(state) // 2
    assert f"{half} key(s) missing (" in message and f"{half} key(s) unexpected (module." in message


def test_cli_options_that_would_fail_later_are_refused_up_front(tmp_path, capsys):
    path = saved(tmp_path)
    # a depth-2 U-Net needs 4 px: a 2 px example would fail inside the ONNX exporter
    for argv, key in ((["export", "-c", str(path), "-o", str(tmp_path / "m.onnx"),
                        "--example-size", "2"], "--example-size"),
                      (["evaluate", "-c", str(path), "-d", "camvid", "--root", str(tmp_path),
                        "-o", str(tmp_path / "e"), "--device", "gpu0"], "--device")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "e").exists()
