"""Tiled prediction: exact reconstruction with trivial predictors, parity with whole images."""
import numpy as np
import pytest
import torch

from pixelwise.inference.tiling import (gaussian_window, mirror_indices, mirror_pad, sliding_window,
                                     tile_starts)
from pixelwise.models import build_model

from common import default_conv_init


pytestmark = pytest.mark.usefixtures("one_thread")


def test_mirror_indices_hand_computed():
    # size 4 reflected: ... 3 2 1 | 0 1 2 3 | 2 1 0 1 2 (pads longer than the image).
    assert mirror_indices(4, 3, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert mirror_indices(1, 2, 1).tolist() == [0, 0, 0, 0]


def test_mirror_pad_matches_numpy_reflect():
    x = torch.arange(3 * 5, dtype=torch.float32).reshape(1, 1, 3, 5)
    got = mirror_pad(x, 4, 2, 1, 7)
    want = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 2), (1, 7)), mode="reflect")
    assert got.shape == (1, 1, 9, 13)
    assert (got.numpy() == want).all()


def test_tile_starts_cover_and_end_at_border():
    assert tile_starts(10, 4, 3) == [0, 3, 6]
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert tile_starts(3, 4, 3) == [0]


def test_gaussian_window_positive_and_peaked():
    w = gaussian_window(17, 10)
    assert w.shape == (17, 10)
    assert w.min() >= 1e-3 and w.min() > 0
    assert w.max() == pytest.approx(1.0)
    assert w[8, 4] == w[8, 5]  # symmetric about the centre of an even width
    assert torch.equal(w, w.flip(0))
    with pytest.raises(ValueError, match="min_weight"):
        gaussian_window(4, 4, min_weight=0)


@pytest.mark.parametrize("shape", [(1, 2, 37, 53), (2, 3, 64, 31), (1, 1, 5, 7)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_identity_reconstructs_exactly_padded(shape, blend, overlap):
    x = torch.randn(shape)
    out = sliding_window(lambda t: t, x, tile_size=16, overlap=overlap, blend=blend, batch_size=3)
    assert out.shape == x.shape
    assert torch.equal(out, x)


def test_per_pixel_function_reconstructs_exactly():
    x = torch.randn(1, 3, 41, 29)

    def fn(t):  # 3 -> 2 channels, pixel by pixel
        return torch.stack([t.sum(1), (t ** 2).mean(1) + 1], dim=1)

    out = sliding_window(fn, x, tile_size=(12, 10), overlap=0.5)
    assert torch.equal(out, fn(x))


def crop_predictor(margin):
    """A stand-in for a valid-convolution model: each output pixel is its input pixel."""
    return lambda t: t[..., margin:t.shape[-2] - margin, margin:t.shape[-1] - margin]


@pytest.mark.parametrize("shape", [(1, 2, 37, 53), (1, 1, 7, 9), (2, 1, 1, 40)])
@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_identity_reconstructs_exactly_valid(shape, overlap):
    x = torch.randn(shape)
    out = sliding_window(crop_predictor(5), x, tile_size=21, overlap=overlap, output_size=11)
    assert torch.equal(out, x)


def test_valid_tiles_see_mirrored_context():
    # A predictor that reports the mean of its whole input tile reveals the context it got:
    # at the top-left pixel the tile must hold the mirrored image, not zeros.
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    margin = 2

    def mean_of_context(t):
        return t.mean(dim=(-2, -1), keepdim=True).expand(-1, -1, 1, 1)

    out = sliding_window(mean_of_context, x, tile_size=5, output_size=1)
    want = mirror_pad(x, margin, margin, margin, margin).unfold(2, 5, 1).unfold(3, 5, 1)
    assert torch.allclose(out[0, 0], want[0, 0].mean(dim=(-2, -1)).float())


def test_bad_predictor_output_raises():
    x = torch.randn(1, 1, 20, 20)
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window(lambda t: t[..., :-1, :], x, tile_size=8)
    with pytest.raises(ValueError, match="even margin"):
        sliding_window(lambda t: t, x, tile_size=8, output_size=5)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(lambda t: t, x, tile_size=8, overlap=1.0)


def test_progress_reports_every_tile():
    calls = []
    sliding_window(lambda t: t, torch.zeros(1, 1, 20, 20), tile_size=8, overlap=0.0,
                   batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]


@torch.inference_mode()
def test_valid_unet_tiled_matches_whole_image():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2,
                        padding="valid", batch_norm=False).eval()
    height, width = 45, 38
    x = torch.randn(1, 1, height, width)
    # Whole image: one input large enough for the whole output, mirrored the same way.
    size = 92  # output 52 >= 45, margin 20 per side; sizes 44 + 4k keep poolings exact
    assert model.output_shape(size, size) == (52, 52)
    whole = model(mirror_pad(x, 20, size - height - 20, 20, size - width - 20))[..., :height, :width]
    # Tiles of 52 -> 12; offsets are multiples of 4 = 2**depth so pooling grids line up.
    tiled = sliding_window(model, x, tile_size=52, overlap=0.25, output_size=12, stride_multiple=4)
    assert tiled.shape == (1, 2, height, width)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_padded_unet_tiled_close_to_whole_image():
    torch.manual_seed(0)
    model = default_conv_init(build_model("unet", in_channels=3, num_classes=3,
                                          base_channels=4, depth=2)).eval()
    x = torch.randn(1, 3, 70, 45)
    whole = model(x).softmax(1)
    errors = {}
    for blend in ("gaussian", "constant"):
        tiled = sliding_window(lambda t: model(t).softmax(1), x, tile_size=32, overlap=0.5,
                               blend=blend)
        errors[blend] = (tiled - whole).abs()
    # Zero padding at tile borders changes a padded model's output there; blending keeps the
    # error small (measured: max 0.0024, mean 1.9e-4 for this seed) and the Gaussian window,
    # which trusts tile centres, beats a plain average.
    assert errors["gaussian"].max() < 0.01
    assert errors["gaussian"].mean() < 1e-3
    assert errors["gaussian"].mean() < errors["constant"].mean()
    # Smaller than a tile: one tile, which is the whole image.
    small = x[..., :20, :17]
    torch.testing.assert_close(
        sliding_window(lambda t: model(t).softmax(1), small, tile_size=32), model(small).softmax(1))
