"""``pixelwise data convert``: any spec's masks as PNG files of class indices, with a plain
spec for them (``mask: {encoding: indices}``), e.g. annotation files drawn once.

The new spec reads the original images where they are (absolute paths) and the masks from
``DIR/masks/<split>/<id>.png``: 8-bit greyscale (16-bit above 255) whose values are the class
indices and ``ignore_index``; valid regions are already applied. Every file is written
atomically and ``DIR/spec.yaml`` last, so a spec there means a complete conversion.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_text
from .check import quick_check
from .dataset import load_sample
from .listing import spec_path
from .spec import DatasetSpec, load_spec

SPEC_KEYS = ("name", "class_names", "ignore_index", "channels", "mean", "std", "palette",
             "class_weights", "max_pixels")


def _png(mask: np.ndarray) -> bytes:
    dtype = np.uint8 if mask.max(initial=0) <= 255 else np.uint16
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(dtype)).save(buffer, format="PNG")
    return buffer.getvalue()


def _plain_split(spec: DatasetSpec, name: str) -> dict:
    s = spec.splits[name]
    split: dict = {"images": str(spec_path(spec.root, s.images))}
    if s.id_list is not None:
        lists = [s.id_list] if isinstance(s.id_list, str) else s.id_list
        split["list"] = [str(spec_path(spec.root, x)) for x in lists]
    if s.masks is not None:
        split["masks"] = f"masks/{name}/{{id}}.png"
    for key in ("id_from", "exclude", "optional"):
        if getattr(s, key):
            split[key] = getattr(s, key)
    return split


def convert_dataset(spec: DatasetSpec | dict | str | os.PathLike,
                    output_dir: str | os.PathLike) -> Path:
    """Write every labelled split's masks as PNGs and ``spec.yaml`` for them; returns it.

    Raises:
        DataError: the problems :func:`~pixelwise.data.check.quick_check` finds (all listed),
            or two images of a split with one id.
    """
    spec = load_spec(spec)
    out = Path(output_dir)
    plain = {k: v for k, v in spec.model_dump(mode="json").items() if k in SPEC_KEYS
             and v is not None}
    plain.update(root=".", mask={"encoding": "indices"}, splits={})
    (out / "spec.yaml").unlink(missing_ok=True)  # a spec here means this run finished
    if spec.holdout is not None:
        plain["holdout"] = spec.holdout.model_dump(by_alias=True)
    for name, s in spec.splits.items():
        plain["splits"][name] = _plain_split(spec, name)
        if s.masks is None or (s.optional and not _has_files(spec, name)):
            continue
        quick_check(spec, name)
        samples = spec.resolve(name)
        ids = [x.id for x in samples]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})[0]
            raise DataError(f"splits.{name}: two images with id {twice!r}; give id_from or "
                            "unique file names")
        for sample in samples:
            _, mask = load_sample(spec, sample)
            atomic_write_bytes(out / "masks" / name / f"{sample.id}.png", _png(mask))
    return atomic_write_text(out / "spec.yaml", yaml.safe_dump(plain, sort_keys=False))


def _has_files(spec: DatasetSpec, name: str) -> bool:
    try:
        return bool(spec.resolve(name))
    except DataError:
        return False
