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


# --- run configs and list files: any bytes (not UTF-8 included) -----------------------------

CONFIG = b"""model: {name: unet, kwargs: {base_channels: 4, depth: 2}}
data: {spec: spec.yaml, batch_size: 2}
optim: {lr: 0.01, momentum: 0.9}
train: {epochs: 1, max_minutes: 1.5}
output: {dir: runs}
"""


@fuzz(inputs([CONFIG, "train: {seed: 1}  # café\n".encode("latin-1")]))
def _config(data: bytes) -> None:
    from pixelwise.io.config import load_config

    path = WORK / "run.yaml"
    path.write_bytes(data)
    only_our_errors(load_config, path)


@fuzz(inputs([b"a\nb\n# comment\n", "caf\xe9\n".encode("latin-1")]))
def _list_file(data: bytes) -> None:
    from pixelwise.data import load_spec
    from pixelwise.data.check import check_dataset

    (WORK / "val.txt").write_bytes(data)
    (WORK / "spec.yaml").write_bytes(SPEC.replace(b"ROOT", str(WORK).encode()))
    only_our_errors(lambda: check_dataset(load_spec(WORK / "spec.yaml"), splits=["val"]))


test_config_loader, test_config_loader_long = _config
test_list_file, test_list_file_long = _list_file


@pytest.mark.parametrize("what", ["config", "spec", "list"])
def test_files_that_are_not_utf8_are_one_line_naming_the_file(what, tmp_path):
    from pixelwise.io.config import load_config
    from pixelwise.data import load_spec
    from pixelwise.data.listing import resolve_split

    latin1 = "# café\n".encode("latin-1")
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(SPEC.replace(b"ROOT", str(tmp_path).encode()))
    bad = {"config": tmp_path / "run.yaml", "spec": spec, "list": tmp_path / "val.txt"}[what]
    bad.write_bytes((CONFIG if what == "config" else SPEC.replace(b"ROOT", b".")
                     if what == "spec" else b"a\n") + latin1)
    read = {"config": lambda: load_config(bad), "spec": lambda: load_spec(bad),
            "list": lambda: resolve_split(load_spec(spec), "val")}[what]
    with pytest.raises(PixelwiseError) as e:
        read()
    assert str(e.value).startswith(f"{bad}: ") and "UTF-8" in str(e.value)
    assert "\n" not in str(e.value)


# --- non-finite numbers: every numeric option and every numeric config key -------------------

def _numeric_options():
    """(subcommand path, option) for every numeric option of the command line."""
    import click

    from pixelwise.cli import SUBCOMMANDS, cli

    def walk(command, path):
        if isinstance(command, click.Group):
            for name in command.list_commands(None):
                yield from walk(command.get_command(None, name), [*path, name])
            return
        for param in command.params:
            numeric = (click.types.FloatParamType, click.types.IntParamType)
            if isinstance(param, click.Option) and isinstance(param.type, numeric):
                yield path, param.opts[0]
        if path == ["predict"]:
            yield path, "--scales"  # comma-separated floats, parsed by a callback

    found = []
    for name in SUBCOMMANDS:
        try:
            found += list(walk(cli.get_command(None, name), [name]))
        except click.ClickException:  # an optional extra that is not installed
            continue
    return found


NUMERIC_OPTIONS = _numeric_options()


def test_the_numeric_options_are_all_found():
    assert {opt for _, opt in NUMERIC_OPTIONS} >= {"--minutes", "--overlap", "--threshold",
                                                   "--scales", "--max-upload-mb", "--tile-size",
                                                   "--opset", "--port"}


@pytest.mark.parametrize("path, option", NUMERIC_OPTIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_by_every_numeric_option(path, option, value, capsys):
    from pixelwise.cli import main

    with pytest.raises(SystemExit) as e:
        main([*path, option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert option in err and "Missing" not in err, err


def _config_floats():
    """Dotted keys of every float field of the run config's sections."""
    import typing

    from pixelwise.io.config import RunConfig

    keys = []
    for section, field in RunConfig.model_fields.items():
        model = field.annotation if isinstance(field.annotation, type) else None
        if model is None or not hasattr(model, "model_fields"):
            continue
        for key, sub in model.model_fields.items():
            if float in (sub.annotation, *typing.get_args(sub.annotation)):
                keys.append(f"{section}.{key}")
    return keys


CONFIG_FLOATS = _config_floats()


def test_the_config_floats_are_all_found():
    assert {"train.max_minutes", "optim.lr", "train.val_threshold"} <= set(CONFIG_FLOATS)


@pytest.mark.parametrize("key", CONFIG_FLOATS + ["loss.kwargs.alpha", "augment.scale"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_by_every_config_key(key, value):
    import yaml

    from pixelwise.io.config import load_config
    from pixelwise.errors import ConfigError

    raw = yaml.safe_load(CONFIG)
    with pytest.raises(ConfigError, match=rf"{key}: must be a finite number"):
        load_config(raw=raw, overrides=[f"{key}={value}"])


@pytest.mark.parametrize("key", ["mean", "std", "class_weights"])
def test_non_finite_numbers_are_refused_in_a_spec(key, tmp_path):
    import yaml

    from pixelwise.data import load_spec
    from pixelwise.errors import ConfigError

    spec = yaml.safe_load(SPEC.replace(b"ROOT", str(tmp_path).encode()))
    spec[key] = [float("nan")] if key != "class_weights" else [1.0, float("inf")]
    with pytest.raises(ConfigError, match=key):
        load_spec(spec)
