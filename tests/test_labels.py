"""LabelSet: the names and colours of mask values, the same from a spec, a checkpoint, an
export's metadata and a plain count; class areas against hand counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.data.spec import load_spec
from pixelwise.inference.predict import Predictor
from pixelwise.data.labels import LabelSet, class_areas, class_pixels
from pixelwise.models import build_model

# The PASCAL VOC colour map's first values (visualize.default_palette).
VOC = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]


def test_multiclass_names_keep_their_colours():
    labels = LabelSet.from_names(["sky", "road"], [[1, 2, 3], [4, 5, 6]])
    assert labels == LabelSet(("sky", "road"), ((1, 2, 3), (4, 5, 6)), binary=False)
    assert labels.num_classes == 2


def test_missing_colours_come_from_the_default_palette_at_their_index():
    short = LabelSet.from_names(["a", "b", "c"], [(9, 9, 9)])
    assert short.palette == ((9, 9, 9), VOC[1], VOC[2])
    assert LabelSet.from_names(["a", "b"]).palette == (VOC[0], VOC[1])
    assert LabelSet.from_names(["a", "b"], [(1, 1, 1), (2, 2, 2), (3, 3, 3)]).palette == (
        (1, 1, 1), (2, 2, 2))


def test_binary_model_named_with_one_class_gets_a_background():
    plain = LabelSet.from_names(["vessel"], num_outputs=1)
    assert plain.names == ("background", "vessel") and plain.binary
    assert plain.palette == (VOC[0], VOC[1])
    coloured = LabelSet.from_names(["vessel"], [(0, 255, 0)], num_outputs=1)
    assert coloured.palette == ((0, 0, 0), (0, 255, 0))  # the one colour was the vessel's
    named = LabelSet.from_names(["cells"], num_outputs=1, background="medium")
    assert named.names == ("medium", "cells")
    # one name and no count: one output, so binary; two colours cover both values
    assert LabelSet.from_names(["a"], [(1, 1, 1), (2, 2, 2)]) == LabelSet(
        ("background", "a"), ((1, 1, 1), (2, 2, 2)), binary=True)
    two = LabelSet.from_names(["bg", "fg"], [(5, 5, 5), (6, 6, 6)], num_outputs=1)
    assert two.names == ("bg", "fg") and two.palette == ((5, 5, 5), (6, 6, 6)) and two.binary


def test_names_that_do_not_fit_the_outputs_are_refused():
    with pytest.raises(ValueError, match=r"3 class name\(s\) \(a, b, c\) for a model with 2 "):
        LabelSet.from_names(["a", "b", "c"], num_outputs=2)
    with pytest.raises(ValueError, match=r"3 class name\(s\) .* with 1 outputs"):
        LabelSet.from_names(["a", "b", "c"], num_outputs=1)
    with pytest.raises(ValueError, match="2 colours for 1 class names"):
        LabelSet(("a",), ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(ValueError, match="binary label set has 2 values"):
        LabelSet(("a",), ((0, 0, 0),), binary=True)


def test_from_count_and_from_metadata():
    assert LabelSet.from_count(3).names == ("class 0", "class 1", "class 2")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        LabelSet.from_count(0)
    # Exports written before num_outputs was recorded: one output per class name.
    old = LabelSet.from_metadata({"class_names": ["a", "b"], "palette": None})
    assert old.names == ("a", "b") and not old.binary
    onnx = LabelSet.from_metadata({"class_names": ["fg"], "palette": [[7, 7, 7]],
                                   "num_outputs": 1})
    assert onnx.names == ("background", "fg") and onnx.palette == ((0, 0, 0), (7, 7, 7))


def test_spec_labels(tmp_path):
    spec = load_spec({"root": str(tmp_path), "class_names": ["road", "car", "sky"],
                      "palette": [[1, 1, 1], [2, 2, 2], [3, 3, 3]],
                      "splits": {"val": {"images": "*.png"}}})
    assert spec.labels == LabelSet(("road", "car", "sky"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)))
    default = load_spec({"root": str(tmp_path), "class_names": ["bg", "fg"],
                         "splits": {"val": {"images": "*.png"}}})
    assert default.palette == VOC[:2]
    assert LabelSet.from_spec(default, num_outputs=1).binary
    # one class: the spec keeps its one colour, the class's; its one output is binary
    single = load_spec({"root": str(tmp_path), "class_names": ["cell"], "palette": [[0, 255, 0]],
                        "splits": {"val": {"images": "*.png"}}})
    assert single.palette == [(0, 255, 0)]
    assert single.labels == LabelSet(("background", "cell"), ((0, 0, 0), (0, 255, 0)), True)


def _binary_unet(path, class_names, palette=None):
    kwargs = {"in_channels": 3, "num_classes": 1, "base_channels": 2, "depth": 1}
    return save_checkpoint(path, build_model("unet", **kwargs), "unet", kwargs, class_names,
                           palette=palette)


def test_checkpoint_and_predictor_share_the_labels(tmp_path):
    path = _binary_unet(tmp_path / "bin.pt", ["membrane"], palette=[(0, 200, 0)])
    ckpt = load_checkpoint(path)
    expected = LabelSet(("background", "membrane"), ((0, 0, 0), (0, 200, 0)), binary=True)
    assert ckpt.labels == expected
    predictor = Predictor(ckpt)
    assert predictor.labels == expected
    assert (predictor.class_names, predictor.palette) == (["background", "membrane"],
                                                          [(0, 0, 0), (0, 200, 0)])
    assert predictor.binary and predictor.num_classes == 2


def test_checkpoint_written_by_older_code_still_loads(tmp_path):
    # What pixelwise wrote before the optional keys existed: no ignore_index, config or
    # training, palette None, one class name for a one-logit model.
    model = build_model("unet", in_channels=3, num_classes=1, base_channels=2, depth=1)
    old = {"format": "pixelwise-checkpoint", "version": 1,
           "model": {"name": "unet", "kwargs": {"in_channels": 3, "num_classes": 1,
                                                "base_channels": 2, "depth": 1}},
           "class_names": ["vessel"], "palette": None,
           "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
           "state_dict": model.state_dict()}
    torch.save(old, tmp_path / "old.pt")
    labels = Predictor(tmp_path / "old.pt").labels
    assert labels == LabelSet(("background", "vessel"), (VOC[0], VOC[1]), binary=True)


def test_class_pixels_and_areas_by_hand():
    mask = np.array([[0, 0, 2], [2, 2, 5]])  # 5 is past the 3 classes: not counted
    counts = class_pixels(mask, 3)
    assert counts.tolist() == [2, 0, 3]
    assert class_areas(counts, ["a", "b", "c"]) == {"a": {"pixels": 2, "fraction": 0.4},
                                                    "b": {"pixels": 0, "fraction": 0.0},
                                                    "c": {"pixels": 3, "fraction": 0.6}}
    # summed over masks (a summary's totals), and nothing counted at all
    assert class_areas(counts + class_pixels(np.ones((1, 5)), 3), range(3))[1] == {
        "pixels": 5, "fraction": 0.5}
    assert class_areas(np.zeros(2, np.int64), ["a", "b"])["a"] == {"pixels": 0, "fraction": 0.0}
