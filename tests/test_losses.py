"""Losses: hand-computed values on tiny tensors, ignore_index, and the U-Net weight map."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixelwise.losses import build_loss, list_losses, unet_weight_map

LN = math.log

# Two pixels used by most golden tests (N=1, H=1, W=2):
#   pixel a: logits (0, ln 3) -> softmax (1/4, 3/4), target 1
#   pixel b: logits (0, 0)    -> softmax (1/2, 1/2), target 0
MC_LOGITS = torch.tensor([[[[0.0, 0.0]], [[LN(3.0), 0.0]]]])  # (1, 2, 1, 2)
MC_TARGET = torch.tensor([[[1, 0]]])
# Binary: logits (0, ln 3) -> sigmoid (1/2, 3/4), targets (1, 0).
BIN_LOGITS = torch.tensor([[[[0.0, LN(3.0)]]]])  # (1, 1, 1, 2)
BIN_TARGET = torch.tensor([[[1, 0]]])


def _with_ignored(logits, target):
    """Append a third pixel with ignore_index and arbitrary logits: must change nothing."""
    extra = torch.full(logits.shape[:3] + (1,), 7.0)
    return torch.cat([logits, extra], dim=3), torch.cat([target, torch.full(target.shape[:2] + (1,), 255)], dim=2)


def _check(name, logits, target, expected, **kw):
    loss = build_loss(name, **kw)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert loss(*_with_ignored(logits, target)).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_ce_golden():
    # -(ln 3/4 + ln 1/2) / 2 = (ln 4/3 + ln 2) / 2
    _check("ce", MC_LOGITS, MC_TARGET, (LN(4 / 3) + LN(2)) / 2)


def test_ce_class_weights_golden():
    # weights w0=2, w1=1: (1 * ln 4/3 + 2 * ln 2) / (1 + 2), the torch weighted-mean convention
    _check("ce", MC_LOGITS, MC_TARGET, (LN(4 / 3) + 2 * LN(2)) / 3, class_weights=[2.0, 1.0])
    ref = torch.nn.functional.cross_entropy(MC_LOGITS, MC_TARGET, weight=torch.tensor([2.0, 1.0]))
    assert ref.item() == pytest.approx((LN(4 / 3) + 2 * LN(2)) / 3, rel=1e-6)


def test_bce_golden():
    # pixel a: target 1, p=1/2 -> ln 2; pixel b: target 0, p=3/4 -> -ln(1/4) = ln 4; mean 1.5 ln 2
    _check("bce", BIN_LOGITS, BIN_TARGET, 1.5 * LN(2))
    # pos_weight 3 scales the positive term: (3 ln 2 + ln 4) / 2 = 2.5 ln 2
    _check("bce", BIN_LOGITS, BIN_TARGET, 2.5 * LN(2), pos_weight=3.0)


def test_dice_multiclass_golden():
    # class 0: p = (1/4, 1/2), g = (0, 1): I = 1/2, sum p + sum g = 3/4 + 1 -> Dice 1 / 1.75 = 4/7
    # class 1: p = (3/4, 1/2), g = (1, 0): I = 3/4, 5/4 + 1 -> Dice 1.5 / 2.25 = 2/3
    # loss = 1 - (4/7 + 2/3) / 2 = 8/21
    _check("dice", MC_LOGITS, MC_TARGET, 8 / 21, smooth=0.0)
    # smooth 1: class 0 (1 + 1) / (1.75 + 1) = 8/11, class 1 (1.5 + 1) / (2.25 + 1) = 10/13
    _check("dice", MC_LOGITS, MC_TARGET, 1 - (8 / 11 + 10 / 13) / 2, smooth=1.0)
    # only class 1
    _check("dice", MC_LOGITS, MC_TARGET, 1 - 2 / 3, smooth=0.0, classes=[1])


def test_dice_binary_golden():
    # p = (1/2, 3/4), g = (1, 0): I = 1/2, sum p + sum g = 5/4 + 1 -> Dice 1 / 2.25 = 4/9
    _check("dice", BIN_LOGITS, BIN_TARGET, 5 / 9, mode="binary", smooth=0.0)


def test_dice_ce_golden():
    ce = (LN(4 / 3) + LN(2)) / 2
    _check("dice_ce", MC_LOGITS, MC_TARGET, 0.5 * ce + 2.0 * 8 / 21,
           smooth=0.0, ce_weight=0.5, dice_weight=2.0)
    _check("dice_ce", BIN_LOGITS, BIN_TARGET, 1.5 * LN(2) + 5 / 9, mode="binary", smooth=0.0)


def test_focal_golden():
    # gamma 2: pixel a p_t = 3/4 -> (1/4)^2 ln 4/3; pixel b p_t = 1/2 -> (1/2)^2 ln 2
    a, b = (1 / 16) * LN(4 / 3), (1 / 4) * LN(2)
    _check("focal", MC_LOGITS, MC_TARGET, (a + b) / 2, gamma=2.0)
    # alpha per class (0.25, 0.75): pixel a is class 1, pixel b class 0
    _check("focal", MC_LOGITS, MC_TARGET, (0.75 * a + 0.25 * b) / 2, gamma=2.0, alpha=[0.25, 0.75])
    # gamma 0 is plain CE
    _check("focal", MC_LOGITS, MC_TARGET, (LN(4 / 3) + LN(2)) / 2, gamma=0.0)


def test_focal_binary_golden():
    # pixel a: target 1, p_t = 1/2 -> alpha (1/2)^2 ln 2; pixel b: target 0, p_t = 1/4
    # -> (1 - alpha) (3/4)^2 ln 4; alpha = 0.25
    expected = (0.25 * 0.25 * LN(2) + 0.75 * (9 / 16) * LN(4)) / 2
    _check("focal", BIN_LOGITS, BIN_TARGET, expected, mode="binary", gamma=2.0, alpha=0.25)


def test_lovasz_softmax_golden():
    # Berman et al. Alg. 1 by hand. class 0: fg = (0, 1), errors |fg - p0| = (1/4, 1/2);
    #   sorted desc: 1/2 (fg 1), 1/4 (fg 0); gts = 1; intersection = 1 - cumsum(fg) = (0, 0);
    #   union = 1 + cumsum(1 - fg) = (1, 2); J = 1 - I/U = (1, 1); grad = (1, 0) -> 1/2.
    # class 1: fg = (1, 0), errors (1/4, 1/2); sorted: 1/2 (fg 0), 1/4 (fg 1);
    #   I = (1, 0); U = (2, 2); J = (1/2, 1); grad = (1/2, 1/2) -> 1/4 + 1/8 = 3/8.
    # mean over present classes = (1/2 + 3/8) / 2 = 7/16
    _check("lovasz", MC_LOGITS, MC_TARGET, 7 / 16)


def test_lovasz_present_vs_all_classes():
    # Add a third class with logit -inf-ish: absent from the target. "present" ignores it;
    # "all": its errors are p2 ~ 0 with fg = 0 everywhere, loss_2 = sum of sorted errors * grad
    # where J = 1 - 0/U = 1 at every step -> grad (1, 0): loss_2 = max p2 ~ 0, so the mean
    # becomes (1/2 + 3/8 + 0) / 3.
    logits = torch.cat([MC_LOGITS, torch.full((1, 1, 1, 2), -50.0)], dim=1)
    _check("lovasz", logits, MC_TARGET, 7 / 16)
    _check("lovasz", logits, MC_TARGET, (1 / 2 + 3 / 8) / 3, classes="all")


def test_lovasz_hinge_golden():
    # logits (2, -1, 0.5), labels (1, 0, 0): signs (1, -1, -1); errors 1 - logit*sign
    # = (-1, 0, 1.5); sorted desc (1.5 [0], 0 [0], -1 [1]); gts = 1; I = (1, 1, 0);
    # U = (2, 3, 3); J = (1/2, 2/3, 1); grad = (1/2, 1/6, 1/3); relu(errors) . grad = 3/4
    logits = torch.tensor([[[[2.0, -1.0, 0.5]]]])
    target = torch.tensor([[[1, 0, 0]]])
    _check("lovasz", logits, target, 0.75, mode="binary")


def test_lovasz_per_image():
    # Image 2 repeats image 1: per-image mean equals the single-image value.
    logits, target = MC_LOGITS.repeat(2, 1, 1, 1), MC_TARGET.repeat(2, 1, 1)
    _check("lovasz", logits, target, 7 / 16, per_image=True)


def test_unet_weighted_ce_golden_with_given_map():
    # sum_x w(x) nll(x) / n_valid = (2 ln 4/3 + 0.5 ln 2) / 2; third pixel ignored
    loss = build_loss("unet_weighted_ce")
    w = torch.tensor([[[2.0, 0.5]]])
    expected = (2 * LN(4 / 3) + 0.5 * LN(2)) / 2
    assert loss(MC_LOGITS, MC_TARGET, weight_map=w).item() == pytest.approx(expected, rel=1e-6)
    logits, target = _with_ignored(MC_LOGITS, MC_TARGET)
    w3 = torch.tensor([[[2.0, 0.5, 100.0]]])
    assert loss(logits, target, weight_map=w3).item() == pytest.approx(expected, rel=1e-6)
    # binary: BCE terms ln 2 and ln 4
    bl = build_loss("unet_weighted_ce", mode="binary")
    assert bl(BIN_LOGITS, BIN_TARGET, weight_map=w).item() == pytest.approx(
        (2 * LN(2) + 0.5 * LN(4)) / 2, rel=1e-6)


def test_unet_weighted_ce_on_the_fly_equals_precomputed():
    mask = np.zeros((20, 30), np.int64)
    mask[2:18, 2:14] = 1
    mask[2:18, 15:28] = 1  # two cells with a one-pixel gap at column 14
    target = torch.from_numpy(mask)[None]
    logits = torch.randn(1, 2, 20, 30, generator=torch.Generator().manual_seed(0))
    loss = build_loss("unet_weighted_ce", foreground=1)
    w = torch.from_numpy(unet_weight_map(mask, foreground=1))[None]
    assert loss(logits, target).item() == pytest.approx(loss(logits, target, weight_map=w).item(), rel=1e-6)
    # the border term matters: it differs from the class-balanced-only loss
    plain = build_loss("unet_weighted_ce", foreground=1, w0=0.0)
    assert loss(logits, target).item() > plain(logits, target).item()


# ---------------------------------------------------------------- ignore_index, every loss

CONFIGS = [
    ("ce", {}, 3), ("ce", {"class_weights": [1.0, 2.0, 0.5]}, 3), ("bce", {}, 1),
    ("dice", {}, 3), ("dice", {"mode": "binary"}, 1), ("dice_ce", {}, 3),
    ("dice_ce", {"mode": "binary"}, 1), ("focal", {}, 3), ("focal", {"mode": "binary", "alpha": 0.25}, 1),
    ("lovasz", {}, 3), ("lovasz", {"mode": "binary"}, 1), ("lovasz", {"per_image": True}, 3),
    ("unet_weighted_ce", {}, 3), ("unet_weighted_ce", {"mode": "binary"}, 1),
]


@pytest.mark.parametrize("name,kw,channels", CONFIGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIGS)])
def test_ignored_pixels_contribute_nothing(name, kw, channels):
    g = torch.Generator().manual_seed(1)
    n, h, w = 2, 8, 9
    classes = max(channels, 2)
    target = torch.randint(0, classes, (n, h, w), generator=g)
    ignored = torch.rand(n, h, w, generator=g) < 0.3
    target[ignored] = 255
    base = torch.randn(n, channels, h, w, generator=g, dtype=torch.float64).float()
    loss_fn = build_loss(name, **kw)

    def run(logits):
        x = logits.clone().requires_grad_(True)
        value = loss_fn(x, target)
        value.backward()
        return value.detach(), x.grad

    v1, g1 = run(base)
    changed = base.clone()
    noise = 20.0 * torch.randn(n, channels, h, w, generator=g)
    changed += noise * ignored[:, None].float()
    v2, g2 = run(changed)
    keep = ~ignored[:, None].expand_as(g1)
    assert torch.isfinite(v1)
    assert v1.item() == pytest.approx(v2.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(g1[keep], g2[keep], rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(g1[~keep]) == 0 and torch.count_nonzero(g2[~keep]) == 0
    assert torch.count_nonzero(g1[keep]) > 0  # the loss does depend on the other pixels


@pytest.mark.parametrize("name,kw,channels", CONFIGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIGS)])
def test_channels_last_logits_same_loss_and_gradient(name, kw, channels):
    """Training hands the losses channels_last logits: same value, same gradient."""
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, max(channels, 2), (2, 8, 9), generator=g)
    target[0, :2] = 255
    base = torch.randn(2, channels, 8, 9, generator=g)
    loss_fn = build_loss(name, **kw)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = base.clone().contiguous(memory_format=layout).requires_grad_(True)
        value = loss_fn(x, target)
        value.backward()
        results.append((value.detach(), x.grad))
    (v1, g1), (v2, g2) = results
    assert v2.item() == pytest.approx(v1.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,kw,channels", CONFIGS)
def test_all_ignored_gives_zero_not_nan(name, kw, channels):
    logits = torch.randn(1, channels, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    value = build_loss(name, **kw)(logits, target)
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-6)
    value.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_custom_ignore_index():
    logits, target = _with_ignored(MC_LOGITS, MC_TARGET)
    target = torch.where(target == 255, torch.tensor(11), target)
    loss = build_loss("ce", ignore_index=11)
    assert loss(logits, target).item() == pytest.approx((LN(4 / 3) + LN(2)) / 2, rel=1e-6)


# ---------------------------------------------------------------- contract errors

def test_build_loss_names_and_errors():
    assert list_losses() == sorted(["ce", "bce", "dice", "dice_ce", "focal", "lovasz", "unet_weighted_ce"])
    with pytest.raises(ValueError, match="unknown loss 'iou'.*available: bce, ce"):
        build_loss("iou")
    with pytest.raises(ValueError, match="loss 'ce'.*gamma"):
        build_loss("ce", gamma=2.0)
    with pytest.raises(ValueError, match="mode must be"):
        build_loss("dice", mode="multilabel")


def test_mode_and_shape_checks():
    with pytest.raises(ValueError, match="mode='binary'"):
        build_loss("ce")(BIN_LOGITS, BIN_TARGET)
    with pytest.raises(ValueError, match="one-channel"):
        build_loss("dice", mode="binary")(MC_LOGITS, MC_TARGET)
    with pytest.raises(ValueError, match="does not match"):
        build_loss("ce")(MC_LOGITS, torch.zeros(1, 1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0, 1 or ignore_index.*\[2\]"):
        build_loss("bce")(BIN_LOGITS, torch.tensor([[[2, 0]]]))
    with pytest.raises(ValueError, match="class_weights has 3 entries"):
        build_loss("ce", class_weights=[1, 2, 3])(MC_LOGITS, MC_TARGET)


# ---------------------------------------------------------------- U-Net weight map

def _two_touching_cells():
    mask = np.zeros((40, 80), np.int64)
    mask[10:30, 5:30] = 1
    mask[10:30, 31:56] = 1  # one background column (x = 30) between the cells
    return mask


def test_weight_map_gap_between_touching_cells():
    mask = _two_touching_cells()
    w = unet_weight_map(mask, w0=10, sigma=5, foreground=1, class_weights=[1.0, 1.0])
    # In the gap d1 = d2 = 1: 1 + 10 exp(-(1 + 1)^2 / 50) = 1 + 10 exp(-0.08)
    assert w[20, 30] == pytest.approx(1 + 10 * math.exp(-0.08), rel=1e-6)
    # Far right of both cells (x = 79: d1 = 24, d2 = 49): the term is below 1e-15 -> w_c
    assert w[20, 79] == pytest.approx(1.0, abs=1e-6)
    # Cell pixels keep w_c; and the gap is the maximum of the map
    assert w[20, 10] == pytest.approx(1.0) and w.max() == pytest.approx(w[20, 30])
    # A pixel above the gap: (y=8, x=30): d1 = d2 = sqrt(2^2 + 1^2)
    d = math.sqrt(5)
    assert w[8, 30] == pytest.approx(1 + 10 * math.exp(-(2 * d) ** 2 / 50), rel=1e-6)


def test_weight_map_single_cell_has_no_border_term_and_balances_classes():
    mask = np.zeros((10, 10), np.int64)
    mask[:, :3] = 1  # 30 foreground, 70 background pixels
    w = unet_weight_map(mask, foreground=1)
    # balanced: w_c = n / (K n_c) -> background 100 / (2 * 70), foreground 100 / (2 * 30)
    assert w[0, 9] == pytest.approx(100 / 140) and w[0, 0] == pytest.approx(100 / 60)
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-6)


def test_weight_map_foreground_choice_and_ignore():
    mask = _two_touching_cells()
    mask[0, 0] = 255
    # With foreground=0 the "cells" are the class-0 pixels, which form one connected
    # component around the two blocks (the gap column joins it): a single cell has no
    # second-nearest cell, so the map is w_c alone.
    w = unet_weight_map(mask, foreground=0, class_weights={0: 1.0, 1: 3.0})
    assert set(np.unique(w).tolist()) == {0.0, 1.0, 3.0}
    assert w[0, 0] == 0.0  # ignored pixel
    with pytest.raises(ValueError, match="no weight for class 1"):
        unet_weight_map(mask, class_weights=[1.0])


def test_weight_map_matches_brute_force():
    # Random blobs: the windowed computation equals full-image distance transforms per cell
    # up to the documented truncation w0 exp(-truncate^2 / 2).
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 2)
    mask = (noise > 0.05).astype(np.int64)
    cells, n = ndimage.label(mask)
    assert n >= 5
    dist = np.sort(np.stack([ndimage.distance_transform_edt(cells != k) for k in range(1, n + 1)]), axis=0)
    border = np.where(mask == 0, 10 * np.exp(-(dist[0] + dist[1]) ** 2 / 50), 0.0)
    expected = 1.0 + border
    got = unet_weight_map(mask, foreground=1, class_weights=[1.0, 1.0])
    assert np.abs(got - expected).max() <= 10 * math.exp(-12.5) + 1e-5
    assert got.dtype == np.float32 and got.max() > 5
