"""Connected-component post-processing on hand-made masks, with known results."""
import numpy as np
import pytest
import torch

import pixelwise
from pixelwise.errors import CheckpointError
from pixelwise.inference.postprocess import (apply_postprocessing, check_postprocessing,
                                             choose_postprocessing, describe_postprocessing,
                                             keep_largest_component, remove_small_components)
from pixelwise.io.checkpoint import set_postprocess
from pixelwise.metrics.confusion import ConfusionMatrix


def blobs(shape, *boxes, value=1, base=None):
    """A label map with ``value`` in each (r0, r1, c0, c1) box."""
    out = np.zeros(shape, dtype=np.int64) if base is None else base.copy()
    for r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1] = value
    return out


def test_two_blobs_keep_the_largest():
    mask = blobs((10, 10), (0, 3, 0, 3), (6, 8, 6, 8)).astype(bool)  # 9 px and 4 px
    kept = keep_largest_component(mask)
    assert kept.dtype == bool and kept.sum() == 9 and kept[:3, :3].all()
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()


def test_full_connectivity_joins_diagonal_neighbours():
    diagonal = np.eye(5, dtype=bool)  # one diagonal line: one object, not five specks
    assert keep_largest_component(diagonal).sum() == 5
    assert remove_small_components(diagonal, 5).sum() == 5
    assert remove_small_components(diagonal, 6).sum() == 0


def test_specks_under_n_are_removed():
    mask = blobs((12, 12), (0, 3, 0, 3), (10, 11, 10, 11), (6, 7, 0, 2)).astype(bool)  # 9, 1, 2
    assert remove_small_components(mask, 3).sum() == 9
    assert remove_small_components(mask, 2).sum() == 11
    assert remove_small_components(mask, 1).sum() == 12  # N = 1 removes nothing


def test_apply_postprocessing_per_class_removed_pixels_become_background():
    labels = blobs((10, 10), (0, 3, 0, 3), (8, 9, 8, 9), value=1)           # 9 + speck of 1
    labels = blobs((10, 10), (5, 7, 0, 2), (0, 1, 8, 9), value=2, base=labels)  # 4 + speck
    labels = blobs((10, 10), (9, 10, 0, 1), value=3, base=labels)             # untouched speck
    spec = {"classes": {"1": {"op": "largest"}, "2": {"op": "min_size", "min_size": 2}}}
    out = apply_postprocessing(labels, spec)
    assert out[8, 8] == 0 and out[0, 8] == 0 and out[9, 0] == 3
    assert (out == 1).sum() == 9 and (out == 2).sum() == 4
    assert (labels == 1).sum() == 10  # input unchanged
    assert np.array_equal(apply_postprocessing(labels, None), labels)


def _case():
    """Class 1: one true blob, predicted with a far speck (largest helps). Class 2: two true
    blobs predicted exactly (every op lowers Dice). Some ignored pixels on class 1's blob."""
    target = blobs((20, 20), (2, 6, 2, 6), value=1)                         # 16 px
    target = blobs((20, 20), (10, 13, 10, 13), (15, 18, 2, 5), value=2, base=target)  # 9 + 9
    pred = blobs((20, 20), (19, 20, 19, 20), value=1, base=target)          # + speck of 1
    target[2, 2] = 255                                                      # ignored, predicted 1
    return pred, target


def test_choose_keeps_only_ops_that_raise_dice():
    pred, target = _case()
    spec = choose_postprocessing(iter([(pred, target)]), num_classes=3, ignore_index=255,
                                 class_names=["bg", "polyp", "cyst"])
    one, two = spec["report"]["1"], spec["report"]["2"]
    # class 1: TP 15, P 15 + the speck counted, T 15: before 30/31, after 30/30
    assert one["name"] == "polyp" and one["dice"] == pytest.approx(30 / 31)
    # sizes 1 and 16 (the ignored pixel counts in a size): N = 16 removes the speck
    assert one["largest"] == pytest.approx(1.0) and one["min_size"] == {"16": pytest.approx(1.0)}
    assert one["chosen"] == {"op": "largest"}  # tie with min_size 16: "largest" first
    assert one["gain"] == pytest.approx(1 / 31)
    # class 2: perfect already; largest drops one blob (18/27); two equal blobs give no N
    # that removes anything
    assert two["dice"] == 1.0 and two["largest"] == pytest.approx(2 / 3)
    assert two["min_size"] == {} and two["chosen"] is None
    assert two["gain"] == pytest.approx(-1 / 3)
    assert spec["classes"] == {"1": {"op": "largest"}}
    check_postprocessing(spec, 3)
    assert describe_postprocessing(spec) == [
        "class 1 (polyp): largest component, Dice 0.9677 -> 1.0000",
        "class 2 (cyst): nothing kept (best candidate -0.3333 Dice), Dice 1.0000"]


def test_a_swarm_of_specks_does_not_pull_n_down_to_two():
    target = blobs((100, 100), (0, 20, 0, 25), (40, 65, 0, 40))  # 500 and 1000 px
    pred = target.copy()
    pred[80:100:2, 50:70:2] = 1  # 100 one-pixel specks, 6% of the predicted pixels
    rep = choose_postprocessing([(pred, target)], num_classes=2)["report"]["1"]
    # 1, 2 and 5% of the pixels are specks only (N = 1 removes nothing); 10 and 20% reach
    # the 500-px blob: N = 500 removes the specks and keeps both blobs
    assert rep["min_size"] == {"500": 1.0}
    assert rep["largest"] == pytest.approx(2000 / 2500)  # the 500-px blob is lost
    assert rep["dice"] == pytest.approx(3000 / 3100)
    assert rep["chosen"] == {"op": "min_size", "min_size": 500}


def test_chosen_dice_matches_the_confusion_matrix_after_applying():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        target = blobs((24, 24), (4, 12, 4, 12), value=1)
        pred = target.copy()
        pred[rng.random((24, 24)) < 0.03] = 1  # scattered false specks
        pred[rng.random((24, 24)) < 0.03] = 0
        pairs.append((pred, target))
    spec = choose_postprocessing((p for p in pairs), num_classes=2)  # a generator
    assert spec["classes"]  # specks cost Dice: something is chosen
    cm = ConfusionMatrix(2)
    for pred, target in pairs:
        cm.update(torch.from_numpy(apply_postprocessing(pred, spec)), torch.from_numpy(target))
    rep = spec["report"]["1"]
    assert cm.compute()["per_class_dice"][1] == pytest.approx(rep["dice"] + rep["gain"])


def test_absent_class_is_reported_and_not_chosen():
    zeros = np.zeros((6, 6), dtype=np.int64)
    spec = choose_postprocessing([(zeros, zeros)], num_classes=2)
    assert spec == {"classes": {}, "report": {"1": {"dice": None, "largest": None,
                                                    "min_size": {}, "chosen": None,
                                                    "gain": None}}}
    with pytest.raises(ValueError, match="shape"):
        choose_postprocessing([(zeros, zeros[:3])], num_classes=2)


@pytest.mark.parametrize("spec, message", [
    ({"classes": {"0": {"op": "largest"}}}, r"classes\.0'.*foreground"),
    ({"classes": {"1": {"op": "biggest"}}}, r"classes\.1'.*'op'"),
    ({"classes": {"1": {"op": "min_size", "min_size": 0}}}, "min_size"),
    ({"rules": {}}, "'classes'"),
])
def test_malformed_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        check_postprocessing(spec, 2)


def test_checkpoint_carries_the_spec_and_old_ones_read_none(tmp_path):
    torch.manual_seed(0)
    kw = dict(in_channels=1, num_classes=2, base_channels=4, depth=2)
    model = pixelwise.build_model("unet", **kw)
    path = pixelwise.save_checkpoint(tmp_path / "a.pt", model, "unet", kw, ["bg", "cell"],
                                     mean=(0.5,), std=(0.2,))
    assert pixelwise.load_checkpoint(path).postprocess is None
    raw = torch.load(path, weights_only=True)
    del raw["postprocess"]  # a checkpoint written before the field existed
    torch.save(raw, tmp_path / "old.pt")
    assert pixelwise.load_checkpoint(tmp_path / "old.pt").postprocess is None
    spec = {"classes": {"1": {"op": "min_size", "min_size": 5}}, "report": {}}
    set_postprocess(path, spec)
    assert pixelwise.load_checkpoint(path).postprocess == spec
    with pytest.raises(CheckpointError, match=r"a.pt: malformed checkpoint: 'postprocess"):
        set_postprocess(path, {"classes": {"2": {"op": "largest"}}})
    assert pixelwise.load_checkpoint(path).postprocess == spec  # nothing lost
