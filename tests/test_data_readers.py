"""Readers: every format into (H, W, C) arrays; bad files raise DataError naming the file."""
import logging
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelwise.data import image_size, read_image, read_mask
from pixelwise.errors import DataError


def _rgb(h=6, w=5):
    return (np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 7)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_rgb_round_trip(tmp_path, suffix):
    arr = _rgb()
    path = tmp_path / f"a{suffix}"
    Image.fromarray(arr).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, arr)
    assert image_size(path) == (6, 5)


def test_jpeg_greyscale_and_gif(tmp_path):
    grey = np.full((8, 9), 100, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (8, 9, 1)
    assert abs(int(out.mean()) - 100) <= 1
    Image.fromarray(grey).save(tmp_path / "g.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.gif"), grey)


def test_sixteen_bit_png_and_tiff_keep_depth(tmp_path):
    arr = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(arr).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", arr)
    for name in ("a.png", "a.tif"):
        out = read_image(tmp_path / name)
        assert out.dtype == np.uint16 and out.shape == (4, 5, 1)
        np.testing.assert_array_equal(out[..., 0], arr)


def test_tiff_multipage_and_multiband_become_channels(tmp_path):
    pages = np.stack([np.full((4, 6), v, dtype=np.uint16) for v in (1, 2, 3, 4, 5)])
    tifffile.imwrite(tmp_path / "pages.tif", pages)  # 5 pages of 4x6
    out = read_image(tmp_path / "pages.tif")
    assert out.shape == (4, 6, 5)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3, 4, 5])
    bands = np.stack([np.full((4, 6), v, dtype=np.float32) for v in (0.5, 1.5, 2.5, 3.5)], axis=-1)
    tifffile.imwrite(tmp_path / "bands.tif", bands, photometric="minisblack", planarconfig="contig")
    out = read_image(tmp_path / "bands.tif")
    assert out.shape == (4, 6, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[2, 3], [0.5, 1.5, 2.5, 3.5])
    assert image_size(tmp_path / "pages.tif") == (4, 6)


def test_rgba_drops_alpha_with_a_note(tmp_path, caplog):
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO, logger="pixelwise.data.readers"):
        out = read_image(tmp_path / "a.png")
    assert out.shape == (3, 4, 3)
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()
    assert "alpha channel dropped" in caplog.text and "a.png" in caplog.text


def test_palette_mask_keeps_indices_image_becomes_rgb(tmp_path):
    idx = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192])
    im.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), idx)
    rgb = read_image(tmp_path / "voc.png")
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == (128, 0, 0) and tuple(rgb[1, 1]) == (224, 224, 192)


def test_truncated_png_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png.*truncated"):
        read_image(path)


def test_not_an_image_and_missing_file_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_mask(tmp_path / "nope.png")


def test_pixel_limit_refuses_from_the_header(tmp_path):
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 50), dtype=np.uint8))
    for name in ("big.png", "big.tif"):
        with pytest.raises(DataError, match=f"{name}: 50x40 = 2000 pixels is over the pixel limit of 1999"):
            read_image(tmp_path / name, max_pixels=1999)
        with pytest.raises(DataError, match=name):
            image_size(tmp_path / name, max_pixels=1999)
    assert read_image(tmp_path / "big.png", max_pixels=2000).shape == (40, 50, 1)


def _header_only_png(path, width, height):
    """A PNG whose header claims ``width x height`` grey pixels, with no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_our_pixel_limit_decides_not_pillows(tmp_path):
    # 200 MP: over Pillow's own refusal threshold (2 x 89.5 MP) but under our default limit
    # (2**28) -- the header must be readable, and raising max_pixels must be enough.
    path = tmp_path / "aerial.png"
    _header_only_png(path, 20000, 10000)
    assert image_size(path) == (10000, 20000)
    assert image_size(path, max_pixels=2**62) == (10000, 20000)
    with pytest.raises(DataError, match=r"aerial\.png: 20000x10000 = 200000000 pixels is over "
                                        r"the pixel limit of 100000000"):
        image_size(path, max_pixels=10**8)
    with pytest.raises(DataError, match=r"aerial\.png: 20000x10000 .* over the pixel limit"):
        read_image(path, max_pixels=10**8)
    # decoding it (no pixel data) is a truncated file, not a decompression-bomb refusal
    with pytest.raises(DataError, match=r"aerial\.png: unreadable or truncated"):
        read_image(path)
