"""Pixel scaling and normalisation, and mask colouring, against hand-computed values."""
import numpy as np
import pytest

from pixelwise.errors import DataError
from pixelwise.data.preprocess import adapt_channels, to_tensor
from pixelwise.report.visualize import colorize, default_palette, overlay


def test_to_tensor_scales_by_dtype_then_normalises():
    u8 = np.array([[[0, 255, 51]]], dtype=np.uint8)  # one RGB pixel
    t = to_tensor(u8, mean=(0.5, 0.5, 0.2), std=(0.25, 0.5, 0.1))
    # (0/255 - .5)/.25 = -2 ; (255/255 - .5)/.5 = 1 ; (51/255 - .2)/.1 = 0
    np.testing.assert_allclose(t[:, 0, 0].numpy(), [-2.0, 1.0, 0.0], atol=1e-6)
    u16 = np.full((2, 3), 65535, dtype=np.uint16)
    t16 = to_tensor(u16, mean=(0.5,), std=(0.25,))
    assert t16.shape == (1, 2, 3)
    np.testing.assert_allclose(t16.numpy(), 2.0, atol=1e-6)
    f = np.full((1, 1, 1), 0.75, dtype=np.float32)  # floats are taken as already in [0, 1]
    assert to_tensor(f, (0.25,), (0.5,)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 channels but the normalisation has 1"):
        to_tensor(u8, (0.5,), (0.5,))


def test_palette_colorize_overlay():
    pal = default_palette(4)
    assert pal[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]  # PASCAL VOC colours
    mask = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(colorize(mask, pal)[1, 0], (0, 128, 0))
    img = np.full((2, 2), 100, dtype=np.uint8)
    out = overlay(img, mask, pal, alpha=0.5)
    np.testing.assert_array_equal(out[0, 1], (114, 50, 50))  # (100 + 128) / 2, 100 / 2


def test_adapt_channels():
    grey = np.array([[[10]], [[20]]], dtype=np.uint8)
    assert adapt_channels(grey, 3, "x").tolist() == [[[10, 10, 10]], [[20, 20, 20]]]
    rgb = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert adapt_channels(rgb, 1, "x").tolist() == [[[76]]]  # 0.299 * 255
    with pytest.raises(DataError, match="four.tif: image has 4 channels but .* channels=3"):
        adapt_channels(np.zeros((2, 2, 4)), 3, "four.tif")
