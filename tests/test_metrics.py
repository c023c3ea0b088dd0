"""Metrics: golden confusion matrices by hand, the 0/0 rule, DDP summation, boundary metrics."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.spatial.distance import cdist

from pixelwise.metrics import (ConfusionMatrix, boundary_f1, boundary_f1_per_class, fw_iou,
                               hausdorff95, mean_accuracy, mean_iou, pixel_accuracy, surface)

# 5 classes; class 3 is predicted but never true, class 4 never appears (the last pixel is
# ignored, so its prediction 4 must not count).
TARGET = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 255]])
PRED = torch.tensor([[0, 0, 1, 1, 0, 2, 2, 0, 3, 4]])
# rows = truth:  t0 -> p0 x2, p1 x1;  t1 -> p1 x1, p0 x1;  t2 -> p2 x2, p0 x1, p3 x1
GOLDEN = [[2, 1, 0, 0, 0],
          [1, 1, 0, 0, 0],
          [1, 0, 2, 1, 0],
          [0, 0, 0, 0, 0],
          [0, 0, 0, 0, 0]]


def test_confusion_matrix_golden():
    cm = ConfusionMatrix(num_classes=5)
    cm.update(PRED, TARGET)
    assert cm.mat.dtype == torch.int64 and cm.mat.tolist() == GOLDEN
    m = cm.compute()
    # t (row sums) = 3, 2, 4, 0, 0; p (column sums) = 4, 2, 2, 1, 0; diag = 2, 1, 2, 0, 0; total 9
    assert m["pixel_accuracy"] == pytest.approx(5 / 9)
    # accuracy/recall n_ii / t_i: 2/3, 1/2, 2/4, 0/0 -> None, 0/0 -> None
    assert m["per_class_accuracy"] == pytest.approx([2 / 3, 1 / 2, 1 / 2, None, None])
    assert m["per_class_recall"] == m["per_class_accuracy"]
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)  # = 5/9
    # precision n_ii / p_i: 2/4, 1/2, 2/2, 0/1, 0/0 -> None
    assert m["per_class_precision"] == pytest.approx([1 / 2, 1 / 2, 1.0, 0.0, None])
    # IoU n_ii / (t_i + p_i - n_ii): 2/5, 1/3, 2/4, 0/1, None
    assert m["per_class_iou"] == pytest.approx([2 / 5, 1 / 3, 1 / 2, 0.0, None])
    assert m["mean_iou"] == pytest.approx((2 / 5 + 1 / 3 + 1 / 2 + 0) / 4)  # = 37/120
    # fw IoU: (3 * 2/5 + 2 * 1/3 + 4 * 1/2 + 0 * 0) / 9 = 58/135
    assert m["fw_iou"] == pytest.approx(58 / 135)
    # Dice 2 n_ii / (t_i + p_i): 4/7, 2/4, 4/6, 0/1, None
    assert m["per_class_dice"] == pytest.approx([4 / 7, 1 / 2, 2 / 3, 0.0, None])
    assert m["dice"] == pytest.approx((4 / 7 + 1 / 2 + 2 / 3 + 0) / 4)  # = 73/168
    # Absent classes are JSON null
    assert json.loads(json.dumps(m))["per_class_iou"][4] is None


def test_binary_golden_and_accumulation():
    # Two batches of a binary problem. Batch 1: truth 1 1 0 0, pred 1 0 0 1 -> TP 1 FN 1 TN 1 FP 1.
    # Batch 2: truth 1 0, pred 1 0 -> TP 1 TN 1. Total: [[TN 2, FP 1], [FN 1, TP 2]].
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1, 1], [0, 0]]))
    cm.update(torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert cm.mat.tolist() == [[2, 1], [1, 2]]
    m = cm.compute()
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_iou"] == pytest.approx([2 / 4, 2 / 4])      # TP / (TP + FP + FN)
    assert m["per_class_dice"] == pytest.approx([4 / 6, 4 / 6])     # 2TP / (2TP + FP + FN)
    assert m["fw_iou"] == pytest.approx((3 * 0.5 + 3 * 0.5) / 6)
    cm.reset()
    assert cm.mat.sum() == 0 and cm.compute()["mean_iou"] is None
    assert cm.compute()["pixel_accuracy"] is None


def test_ignore_index_inside_class_range_and_out_of_range_values():
    # ignore_index=1: pixels whose truth is 1 vanish, whatever is predicted.
    cm = ConfusionMatrix(num_classes=3, ignore_index=1)
    cm.update(torch.tensor([[0, 2, 2, 1]]), torch.tensor([[0, 1, 1, 2]]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    # class 1 now: predicted once (column), never true -> IoU 0, recall None
    m = cm.compute()
    assert m["per_class_iou"][1] == 0.0 and m["per_class_recall"][1] is None
    # labels outside [0, C) are dropped like ignored ones
    cm2 = ConfusionMatrix(num_classes=2)
    cm2.update(torch.tensor([0, 1, 1]), torch.tensor([7, 1, -1]))
    assert cm2.mat.tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="shape"):
        cm2.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_fcn_metrics_match_reference_formulas():
    # The FCN authors' score.py: hist rows = truth; nanmean over 0/0 entries.
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (3, 17, 19), generator=g)
    target[target == 5] = 255  # class 5 never true...
    pred = torch.randint(0, 5, (3, 17, 19), generator=g)  # ...nor predicted
    cm = ConfusionMatrix(num_classes=6)
    cm.update(pred, target)
    hist = np.zeros((6, 6))
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            hist[t, p] += 1
    np.testing.assert_array_equal(cm.mat.numpy(), hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    assert pixel_accuracy(cm.mat) == pytest.approx(acc)
    assert mean_accuracy(cm.mat) == pytest.approx(acc_cls)
    assert mean_iou(cm.mat) == pytest.approx(np.nanmean(iu))
    assert fw_iou(cm.mat) == pytest.approx(fwavacc)
    assert cm.compute()["per_class_iou"][5] is None


def test_all_reduce_without_distributed_is_noop():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.all_reduce()
    assert cm.mat.tolist() == [[1, 1], [0, 0]]


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[:, 0] = 255
    return torch.randint(0, 4, (2, 8, 8), generator=g), target


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(num_classes=4)
        cm.update(*_rank_batch(rank))
        cm.all_reduce()
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), cm.mat.numpy())
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(60)
def test_confusion_matrix_sums_across_two_gloo_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = ConfusionMatrix(num_classes=4)
    for rank in range(2):
        expected.update(*_rank_batch(rank))
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npy")
        np.testing.assert_array_equal(got, expected.mat.numpy())
    assert expected.mat.sum() == 2 * 2 * 7 * 8  # 2 ranks x 2 images x 7 unignored rows x 8


# ---------------------------------------------------------------- boundary F1

def _square(shift_x: int = 0, size: int = 30) -> np.ndarray:
    m = np.zeros((size, size), np.int64)
    m[10:20, 10 + shift_x:20 + shift_x] = 1
    return m


def test_surface_is_the_inner_outline():
    s = surface(_square() == 1, np.ones((30, 30), bool))
    assert s.sum() == 36 and s[10, 10] and s[15, 19] and not s[15, 15]


def test_boundary_f1_shifted_square():
    target, pred = _square(), _square(shift_x=1)
    # tolerance 2 (or 1): every outline pixel of one square is within 1 px of the other's
    assert boundary_f1(pred, target, tolerance=2, classes=[1]) == pytest.approx(1.0)
    assert boundary_f1(pred, target, tolerance=1, classes=[1]) == pytest.approx(1.0)
    # tolerance 0: of the 36 outline pixels only the overlapping parts of the top and bottom
    # rows (columns 11..19: 9 + 9) coincide -> precision = recall = 18/36 -> F1 = 1/2
    assert boundary_f1(pred, target, tolerance=0, classes=[1]) == pytest.approx(0.5)
    # both classes, batch of two identical pairs: background outline behaves the same way
    per_class = boundary_f1_per_class(pred, target, tolerance=2)
    assert per_class == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    batch = boundary_f1(np.stack([pred, target]), np.stack([target, target]), tolerance=0, classes=[1])
    assert batch == pytest.approx((0.5 + 1.0) / 2)


def test_boundary_f1_missing_and_absent_classes():
    target = _square()
    empty = np.zeros_like(target)
    # class 1 missed entirely: 0; class 2 nowhere: None and excluded from the mean
    assert boundary_f1_per_class(empty, target, classes=[1, 2]) == {1: 0.0, 2: None}
    assert boundary_f1(target, target, classes=[1, 2]) == pytest.approx(1.0)
    assert boundary_f1(empty, empty, classes=[1]) is None


def test_boundary_f1_ignores_void_rim():
    # The truth marks the right half void; the prediction has class 1 over the whole square.
    # Without the ignore rule the truth's cut edge at the void would be a false boundary.
    target = _square()
    target[:, 15:] = 255
    pred = _square()
    assert boundary_f1(pred, target, tolerance=0, classes=[1]) == pytest.approx(1.0)
    assert boundary_f1(torch.from_numpy(pred), torch.from_numpy(target), tolerance=0, classes=[1]) == 1.0


# ---------------------------------------------------------------- Hausdorff 95

def test_hd95_identical_and_empty():
    sq = _square()
    assert hausdorff95(sq, sq) == 0.0
    assert hausdorff95(np.zeros_like(sq), np.zeros_like(sq)) is None
    assert hausdorff95(np.zeros_like(sq), sq) == math.inf


def test_hd95_prediction_filling_the_image_is_finite():
    # All-foreground prediction (common early in training): it has no 4-neighbour outside
    # itself, so its surface is the image rim. The target's square outline is 10..19; the
    # farthest rim pixels are the corners, the 95th percentile well under the diagonal.
    target = _square()
    pred = np.ones_like(target)
    hd = hausdorff95(pred, target)
    assert math.isfinite(hd) and 9.0 <= hd <= math.hypot(29, 29)
    # pred -> target: the rim pixel (0, 15) is 10 rows from the outline row 10
    rim = np.argwhere(pred & ~np.pad(np.ones((28, 28), bool), 1))
    st = np.argwhere(surface(target == 1, np.ones_like(target, bool)))
    d = cdist(rim, st)
    assert hd == pytest.approx(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def test_hd95_known_shift():
    # Full-width stripes: each surface is one top row and one bottom row (the image edge is
    # not a surface), so every surface distance equals the vertical shift.
    target = np.zeros((40, 25), np.int64)
    target[10:20] = 1
    pred = np.roll(target, 3, axis=0)
    assert hausdorff95(pred, target) == pytest.approx(3.0)
    assert hausdorff95(pred, target, spacing=(0.5, 1.0)) == pytest.approx(1.5)
    # Single pixels 3 rows and 4 columns apart: distance 5
    a, b = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    a[1, 1], b[4, 5] = 1, 1
    assert hausdorff95(a, b) == pytest.approx(5.0)


def test_hd95_matches_pairwise_percentiles():
    rng = np.random.default_rng(3)
    target = _square(size=40)
    pred = np.zeros_like(target)
    pred[12:25, 8:21] = 1
    pred[rng.integers(0, 40, 5), rng.integers(0, 40, 5)] = 1  # stray pixels -> a long tail
    valid = np.ones_like(target, bool)
    sp, st = np.argwhere(surface(pred == 1, valid)), np.argwhere(surface(target == 1, valid))
    d = cdist(sp, st)
    expected = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert hausdorff95(pred, target) == pytest.approx(expected)
    assert expected > 1.0
