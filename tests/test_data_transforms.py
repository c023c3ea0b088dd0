"""Joint transforms: geometry shared by image and mask, valid labels, seeded determinism."""
import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import SegmentationDataset, build_transforms, load_spec
from pixelwise.data.transforms import (ElasticDeform, RandomCrop, RandomFlip, RandomRotate,
                                       RandomScale, elastic_displacement, warp)
from pixelwise.errors import ConfigError


def _pair(h=40, w=48, classes=4):
    """A blocky mask and an image whose first channel encodes the mask (label * 50)."""
    mask = (np.arange(h)[:, None] // 10 + np.arange(w)[None, :] // 12) % classes
    image = np.stack([mask * 50, np.full_like(mask, 7), mask * 10], axis=-1).astype(np.uint8)
    return image, mask.astype(np.int64)


def test_warp_identity_is_exact():
    image, mask = _pair()
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float32)
    out, m = warp(image, mask, yy, xx, ignore_index=255)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(m, mask)


def test_elastic_zero_displacement_is_identity():
    image, mask = _pair()
    out, m = ElasticDeform(sigma=0.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(m, mask)


def test_elastic_field_is_the_coarse_grid_interpolated():
    d = elastic_displacement((21, 31), sigma=10, grid=3, rng=np.random.default_rng(3))
    coarse = np.random.default_rng(3).normal(0, 10, size=(1, 2, 3, 3)).astype(np.float32)[0]
    # bicubic with aligned corners passes through the 3x3 control points
    for i, y in enumerate((0, 10, 20)):
        for j, x in enumerate((0, 15, 30)):
            np.testing.assert_allclose(d[:, y, x], coarse[:, i, j], atol=1e-4)
    assert d.shape == (2, 21, 31) and 0 < np.abs(d).max() < 60


def test_elastic_keeps_labels_and_alignment_and_is_seeded():
    image, mask = _pair()
    t = ElasticDeform(sigma=10, grid=3)
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    c = t(image, mask, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[1], mask)  # it did deform
    out, m = a
    assert m.dtype == np.int64 and set(np.unique(m)) <= {0, 1, 2, 3}
    # Same grid: where the bilinear image sits exactly on a label level, the mask agrees.
    exact = out[..., 0] % 50 == 0
    assert exact.mean() > 0.8
    np.testing.assert_array_equal(out[..., 0][exact] // 50, m[exact])


def test_rotation_pads_mask_with_ignore_and_flip_is_joint():
    image, mask = _pair()
    out, m = RandomRotate(30, ignore_index=255)(image, mask, np.random.default_rng(0))
    assert set(np.unique(m)) <= {0, 1, 2, 3, 255} and (m == 255).any()
    # corners come from outside: ignored in the mask, black in the image; along the rim the
    # bilinear image is a blend with the zero padding (channel 1 is 7 inside)
    assert m[0, 0] == m[-1, -1] == 255 and (out[0, 0] == 0).all()
    assert (out[..., 1][m == 255] < 7).all()
    f_img, f_mask = RandomFlip(axis=1, p=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(f_mask, mask[:, ::-1])
    np.testing.assert_array_equal(f_img[..., 0] // 50, f_mask)


def test_scale_and_crop_pad_with_ignore_index():
    image, mask = _pair(10, 12)
    out, m = RandomScale((2.0, 2.0))(image, mask, np.random.default_rng(0))
    assert out.shape == (20, 24, 3) and m.shape == (20, 24)
    np.testing.assert_array_equal(m, np.repeat(np.repeat(mask, 2, 0), 2, 1))
    out, m = RandomCrop((16, 30), ignore_index=255)(image, mask, np.random.default_rng(0))
    assert out.shape == (16, 30, 3) and m.shape == (16, 30)
    assert (m[10:] == 255).all() and (m[:, 12:] == 255).all() and (out[10:] == 0).all()
    np.testing.assert_array_equal(m[:10, :12], mask)


def test_build_transforms_full_pipeline_and_errors():
    image, mask = _pair(64, 80)
    cfg = {"scale": [0.75, 1.25], "crop": 32, "hflip": 0.5, "vflip": 0.5, "rotate90": True,
           "rotate": 10, "elastic": {"sigma": 5}, "color_jitter": 0.2, "seed": 3}
    t = build_transforms(cfg, train=True, ignore_index=255)
    a = t(image, mask)
    b = build_transforms(cfg, train=True, ignore_index=255)(image, mask)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8 and a[1].shape == (32, 32)
    assert set(np.unique(a[1])) <= {0, 1, 2, 3, 255}
    ev = build_transforms(cfg, train=False, ignore_index=255)(image, mask)
    np.testing.assert_array_equal(ev[1], mask)
    with pytest.raises(ConfigError, match="augment.flip"):
        build_transforms({"flip": 0.5}, train=True, ignore_index=255)
    with pytest.raises(ConfigError, match="augment.elastic.alpha"):
        build_transforms({"elastic": {"alpha": 3}}, train=True, ignore_index=255)
    # a flip is a probability: `hflip: true` must not silently flip every image
    for bad in (True, 1.5, "0.5"):
        with pytest.raises(ConfigError, match="augment.hflip: expected a probability"):
            build_transforms({"hflip": bad}, train=True, ignore_index=255)
    assert build_transforms({"vflip": 0, "hflip": None}, train=True, ignore_index=255).transforms == []


def test_dataloader_workers_are_seeded_by_torch(tmp_path):
    for i in range(4):
        img, m = _pair(24, 24)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / f"{i}_m.png")
    spec = load_spec({"root": str(tmp_path), "class_names": list("abcd"),
                      "splits": {"train": {"images": "?.png", "masks": "{stem}_m.png"}}})
    t = build_transforms({"rotate": 45, "elastic": True}, train=True, ignore_index=255)
    ds = SegmentationDataset(spec, "train", transform=t)

    def run():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
        return torch.cat([m for _, m in loader])

    first, second = run(), run()
    assert torch.equal(first, second)
    assert not torch.equal(first[0], first[2])  # workers do not repeat each other's draws


def test_balanced_crop_reaches_a_rare_class_half_the_time():
    # A 5x3 patch of class 1 in a 100x120 mask of class 0 (and an ignored band): a uniform
    # 32-px crop holds it with probability about 36*34/(69*89) = 0.2 (0.6% of pixels);
    # balanced=1 draws class 1 or 0 with equal odds, so at least half the crops hold it.
    mask = np.zeros((100, 120), np.int64)
    mask[90:95, 3:6] = 1
    mask[:2] = 255
    image = np.arange(100 * 120 * 3, dtype=np.float32).reshape(100, 120, 3)
    rng = np.random.default_rng(0)
    balanced, uniform = RandomCrop(32, 255, balanced=1.0), RandomCrop(32, 255)
    hits = [(balanced(image, mask, rng)[1] == 1).any() for _ in range(400)]
    assert 0.5 <= np.mean(hits) <= 0.7
    assert np.mean([(uniform(image, mask, rng)[1] == 1).any() for _ in range(400)]) < 0.3
    # the crop stays aligned and inside the image
    img, m = balanced(image, mask, rng)
    y, x = np.unravel_index(int(img[0, 0, 0]) // 3, (100, 120))
    assert m.shape == (32, 32) and np.array_equal(m, mask[y:y + 32, x:x + 32])
    with pytest.raises(ConfigError, match="augment.balanced_crop"):
        build_transforms({"crop": 32, "balanced_crop": 2}, train=True, ignore_index=255)
