"""Fuzzing as a standing guard: random and mutated bytes fed to the image readers, the upload
decoder, the checkpoint reader and the dataset-spec loader must either work or raise
pixelwise's own error type (PixelwiseError), never anything else.

Each property runs 40 examples in the default suite (the "pixelwise" Hypothesis profile in
conftest.py) and 1000 in its slow twin (``pytest -m slow``)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from pixelwise.errors import PixelwiseError  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="pixelwise-fuzz-"))


def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 255, (6, 5, channels), dtype=np.uint8).squeeze(-1 if channels == 1
                                                                             else ())
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {
    ".png": [_encoded("PNG", "L"), _encoded("PNG", "RGBA")],
    ".jpg": [_encoded("JPEG", "RGB")],
    ".bmp": [_encoded("BMP", "RGB")],
    ".gif": [_encoded("GIF", "L")],
    ".tif": [_encoded("TIFF", "RGB"), _encoded("TIFF", "L")],
}
_npy = io.BytesIO()
np.save(_npy, np.zeros((4, 3), np.uint16))
IMAGES[".npy"] = [_npy.getvalue()]


def _checkpoint_bytes() -> bytes:
    from pixelwise.io.checkpoint import make_checkpoint
    from pixelwise.models import build_model

    kwargs = dict(in_channels=1, num_classes=2, base_channels=2, depth=1)
    buf = io.BytesIO()
    torch.save(make_checkpoint(build_model("unet", **kwargs), "unet", kwargs, ["a", "b"],
                               (0.5,), (0.25,)), buf)
    return buf.getvalue()


SPEC = b"""name: fuzz
root: ROOT
class_names: [background, thing]
channels: 1
mask: {encoding: value_map, value_map: {0: 0, 255: 1}}
splits:
  train: {images: "img/*.png", masks: "lbl/{stem}.png"}
  val: {list: val.txt, images: "img/{id}.png", masks: "lbl/{id}.png", id_from: "{id}.png"}
"""


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes replaced, blocks inserted, or its tail cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["replace", "insert", "cut"]))
        if kind == "replace":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at:]
    return bytes(data)


def inputs(seeds: list[bytes]):
    return st.one_of(st.binary(max_size=256), mutated(seeds))


def fuzz(strategy):
    """The property as a fast test and a slow-marked twin with many more examples."""
    def decorate(check):
        fast = given(strategy)(check)
        slow = pytest.mark.slow(settings(settings.get_profile("fuzz-long"))(given(strategy)(check)))
        return fast, slow
    return decorate


def only_our_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except PixelwiseError:
        pass


@fuzz(st.sampled_from(sorted(IMAGES)).flatmap(lambda s: st.tuples(st.just(s),
                                                                   inputs(IMAGES[s]))))
def _readers(case) -> None:
    from pixelwise.data import image_size, read_image, read_mask

    suffix, data = case
    path = WORK / f"image{suffix}"
    path.write_bytes(data)
    for read in (read_image, read_mask, image_size):
        only_our_errors(read, path, max_pixels=1 << 20)


@fuzz(st.tuples(inputs([s for seeds in IMAGES.values() for s in seeds]),
                st.sampled_from([1, 3, None])))
def _upload(case) -> None:
    from pixelwise.serve.images import decode_image

    data, channels = case
    only_our_errors(decode_image, data, max_pixels=1 << 20, in_channels=channels)


@fuzz(inputs([_checkpoint_bytes()]))
def _checkpoint(data: bytes) -> None:
    from pixelwise.io.checkpoint import load_checkpoint

    path = WORK / "checkpoint.pt"
    path.write_bytes(data)
    only_our_errors(load_checkpoint, path)


@fuzz(inputs([SPEC.replace(b"ROOT", str(WORK).encode())]))
def _spec(data: bytes) -> None:
    from pixelwise.data import load_spec

    path = WORK / "spec.yaml"
    path.write_bytes(data)
    only_our_errors(load_spec, path)


test_image_readers, test_image_readers_long = _readers
test_upload_decoder, test_upload_decoder_long = _upload
test_checkpoint_reader, test_checkpoint_reader_long = _checkpoint
test_spec_loader, test_spec_loader_long = _spec
