"""inference/forward.py: logits for a whole image and the labelling rule, by hand-computed
values (the import rules: tests/test_architecture.py)."""
from __future__ import annotations

import pytest
import torch

from pixelwise.inference.forward import (labels_from_logits, labels_from_probabilities,
                                         probabilities, whole_image_logits)
from pixelwise.models import build_model


class _Crop(torch.nn.Module):
    """A 'valid' model that returns its input without a margin of ``m`` pixels."""

    def __init__(self, m: int):
        super().__init__()
        self.m = m

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        return h - 2 * self.m, w - 2 * self.m

    def forward(self, x):
        return x[..., self.m:-self.m, self.m:-self.m]


class _GridPhase(_Crop):
    """A valid model with a pooling grid of 4: it takes inputs of 4k + 2m pixels only and adds
    each output pixel's input row modulo 4, so the output shows where the grid fell."""

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        if (h - 2 * self.m) % 4 or (w - 2 * self.m) % 4:
            raise ValueError("not on the grid")
        return super().output_shape(h, w)

    def forward(self, x):
        rows = torch.arange(x.shape[-2], dtype=x.dtype)[:, None] % 4
        return super().forward(x + rows)


def test_valid_models_get_every_pixel_back_exactly():
    x = torch.arange(2 * 1 * 9 * 7, dtype=torch.float32).reshape(2, 1, 9, 7)
    assert torch.equal(whole_image_logits(_Crop(3), x), x)   # mirrored border cropped away
    assert torch.equal(whole_image_logits(_Crop(12), x), x)  # margin beyond the image size


def test_image_pixel_sees_the_grid_at_one_phase_whatever_the_size():
    # Input row of image row j: j + m (the image starts after the margin), so the added
    # phase is (j + 2) % 4 for m = 2 at every height; centring the image in the padded input
    # (the old validation rule) shifted it by (in - h) // 2 - m, which depends on the height.
    for height in (9, 10, 11, 12):
        x = torch.zeros(1, 1, height, 5)
        out = whole_image_logits(_GridPhase(2), x)
        assert out.shape == (1, 1, height, 5)
        assert out[0, 0, :, 0].tolist() == [(j + 2) % 4 for j in range(height)]


def test_valid_unet_logits_at_the_image_size():
    net = build_model("unet", in_channels=1, num_classes=2, base_channels=2, depth=2,
                      padding="valid", batch_norm=False)
    assert whole_image_logits(net, torch.randn(1, 1, 40, 36)).shape == (1, 2, 40, 36)
    assert whole_image_logits(net, torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_padded_models_and_callables_pass_through():
    x = torch.randn(1, 3, 5, 6)
    assert torch.equal(whole_image_logits(lambda t: t * 2, x), x * 2)
    # A backend is a plain callable: the geometry comes from shape_model.
    got = whole_image_logits(lambda t: t[..., 3:-3, 3:-3], x, shape_model=_Crop(3))
    assert torch.equal(got, x)


def test_binary_labels_follow_the_sigmoid_threshold():
    # logits 0, -0.5, 0.5, 2: sigmoids 0.5, 0.3775, 0.6225, 0.8808
    logits = torch.tensor([[[[0.0, -0.5, 0.5, 2.0]]]])
    assert labels_from_logits(logits).tolist() == [[[1, 0, 1, 1]]]  # 0.5 >= 0.5: foreground
    assert labels_from_logits(logits, 0.3).tolist() == [[[1, 1, 1, 1]]]
    assert labels_from_logits(logits, 0.7).tolist() == [[[0, 0, 0, 1]]]
    assert labels_from_logits(logits, 0.9).tolist() == [[[0, 0, 0, 0]]]


def test_multiclass_labels_are_the_argmax_whatever_the_threshold():
    logits = torch.tensor([[[[0.1, 2.0]], [[0.3, -1.0]], [[-2.0, 1.9]]]])  # (1, 3, 1, 2)
    assert labels_from_logits(logits).tolist() == [[[1, 0]]]
    assert labels_from_logits(logits, 0.99).tolist() == [[[1, 0]]]
    probs = probabilities(logits)
    # softmax over the classes, by hand: exp(0.1), exp(0.3), exp(-2) over their sum, ...
    want = torch.tensor([[[[0.426647, 0.511607]], [[0.521108, 0.025471]], [[0.052246, 0.462921]]]])
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-6)
    assert labels_from_probabilities(probs).tolist() == [[[1, 0]]]
    # the rule on probabilities others computed (TTA averages them): the largest wins
    assert labels_from_probabilities(torch.tensor([[[[0.2]], [[0.3]], [[0.5]]]])).tolist() == [[[2]]]
    # binary: one foreground channel, compared with the threshold (0.5 counts as foreground)
    fg = torch.tensor([[[[0.5, 0.49, 0.7]]]])
    assert labels_from_probabilities(fg).tolist() == [[[1, 0, 1]]]
    assert labels_from_probabilities(fg, 0.6).tolist() == [[[0, 0, 1]]]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_predictor_refuses_a_threshold_outside_0_1(bad):
    from pixelwise.inference.forward import check_threshold

    with pytest.raises(ValueError, match="threshold must be in"):
        check_threshold(bad)
