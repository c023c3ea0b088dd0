"""The dataset spec: a validated, declarative description of a folder of images and masks.

A spec says where the images of each split are (a glob, or a list file of ids), how the mask
of an image is found (a path template), how raw mask values become class indices (the mask
encoding), and the classes, normalisation and palette. Example (CamVid)::

    name: camvid
    root: /data/camvid                    # relative paths resolve against the YAML's folder
    class_names: [Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car,
                  Pedestrian, Bicyclist]
    ignore_index: 255
    channels: 3
    mask: {encoding: indices, ignore_values: [11]}     # void (11) -> ignore_index
    splits:
      train: {images: "train/*.png", masks: "trainannot/{name}"}
      val:   {images: "val/*.png",   masks: "valannot/{name}"}

Paths and path templates (``images``, ``list``, ``masks``, ``valid``) are relative to ``root``
unless absolute (then taken as given), and may use ``{id}``, ``{stem}`` (file name without
suffix), ``{name}`` (file name) and ``{parent}`` (the image's folder name). ``{id}`` is the
stem unless ``id_from`` gives a pattern for the image file name, e.g. ``"{id}_training.tif"``
(DRIVE: ``21_training.tif -> 21``, mask ``"1st_manual/{id}_manual1.gif"``).

Mask encodings (``mask.encoding``):

- ``indices``: values are class indices; ``ignore_values`` become ``ignore_index``.
- ``value_map``: ``{raw value: class}``, e.g. ``{0: 0, 255: 1}``; a class may be the
  ``ignore_index``; unmapped values are an error, or ignored with ``unmapped: ignore``.
- ``threshold``: ``raw >= threshold`` is class 1, else 0 (noisy binary masks, e.g. JPEG).
- ``rgb``: ``colors[i]`` is the RGB colour of class ``i``; ``ignore_colors`` are ignored.
- ``instances``: ``masks`` is a glob template matching one file per object; every non-zero
  pixel of any object becomes ``instance_class`` and the rest background (0). A single
  labelled file (0 = background, k = object k) works the same way.

- ``labelme`` / ``coco`` / ``cvat``: annotation files drawn into masks
  (:mod:`pixelwise.data.annotations`). ``masks`` is the LabelMe JSON template of each image
  (``"json/{stem}.json"``) or the split's one COCO JSON / CVAT for images 1.1 XML file
  (``"annotations/train.json"``); labels map to ``class_names`` by name; pixels no shape
  covers are class 0; LabelMe lines and points are ``line_width`` / ``point_size`` px.

``holdout`` carves a seeded fraction of one split into a new one (DRIVE's ``val``);
``folds: {from: train, k: 5, index: 2, seed: 0}`` keeps fold 2 of 5 seeded folds of ``train``
as the new split ``fold_val`` (``to``) and the other four as ``train`` (``pixelwise train
--folds`` writes it into each fold's config).

An optional ``valid`` template per split names a region mask (non-zero = inside); pixels
outside become ``ignore_index`` (DRIVE's field of view).

A mask stored beside its image (liver: ``train/000.png`` and ``train/000_mask.png``) is
``images: "train/*.png"``, ``masks: "train/{stem}_mask.png"``: a file that the image glob
matches and that is the mask of another matched image is not an image. ``exclude`` (file-name
globs) leaves out other files. A split marked ``optional: true`` (a preset's test split) may be
absent from a copy of the data; every other split must have files.

A split ``list`` file names one sample per line: the whole line (trimmed) is the ``{id}``,
spaces included (``my image``); blank lines and lines starting with ``#`` are skipped. A line
``image<TAB>mask`` is a pair of paths under the root, as is VOC's train_aug form, two paths
each starting with "/" separated by one space. A list without any id is an error.
"""
from __future__ import annotations

import copy
import os
import string
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ..errors import ConfigError, DataError
from .labels import LabelSet
from .encoding import encode_mask  # noqa: F401  (re-exported: the spec's mask encoding)
from .listing import Sample, resolve_split
from .preprocess import IMAGENET_MEAN, IMAGENET_STD
from .readers import DEFAULT_MAX_PIXELS

PRESET_DIR = Path(__file__).with_name("presets")

RGB = tuple[int, int, int]
TEMPLATE_FIELDS = {"id", "stem", "name", "parent"}


class MaskSpec(BaseModel):
    """How raw mask values become class indices (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    encoding: Literal["indices", "value_map", "threshold", "rgb", "instances", "labelme", "coco",
                      "cvat"] = "indices"
    value_map: dict[int, int] | None = None
    threshold: float | None = None
    colors: list[RGB] | None = None
    ignore_values: list[int] = Field(default_factory=list)
    ignore_colors: list[RGB] = Field(default_factory=list)
    unmapped: Literal["error", "ignore"] = "error"
    instance_class: int = 1
    line_width: int = Field(default=10, ge=1)  # annotation lines (LabelMe's default)
    point_size: int = Field(default=5, ge=0)  # annotation points: disc radius (LabelMe's)

    @model_validator(mode="after")
    def _needs(self) -> "MaskSpec":
        need = {"value_map": "value_map", "threshold": "threshold", "rgb": "colors"}
        key = need.get(self.encoding)
        if key and getattr(self, key) is None:
            raise ValueError(f"mask.{key} is required for encoding {self.encoding!r}")
        return self


class SplitSpec(BaseModel):
    """Where the samples of one split are."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    images: str
    id_list: str | list[str] | None = Field(default=None, alias="list")
    id_from: str | None = None
    masks: str | None = None
    valid: str | None = None
    exclude: list[str] = Field(default_factory=list)
    optional: bool = False

    @field_validator("images", "masks", "valid", "id_from")
    @classmethod
    def _known_fields(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as e:
            raise ValueError(f"bad template {template!r}: {e}") from None
        unknown = names - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown field {sorted(unknown)[0]!r} in template {template!r} "
                             f"(use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))})")
        return template


class HoldoutSpec(BaseModel):
    """Carve a seeded random split (e.g. ``val``) out of another (e.g. ``train``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    source: str = Field(default="train", alias="from")
    target: str = Field(default="val", alias="to")
    fraction: float = Field(gt=0, lt=1)
    seed: int = 0


class FoldSpec(BaseModel):
    """Fold ``index`` of ``k`` seeded folds of a split: ``from`` keeps the other ``k - 1``
    folds, ``to`` (a new split) is the held-out fold (see :func:`fold_parts`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    source: str = Field(default="train", alias="from")
    target: str = Field(default="fold_val", alias="to")
    k: int = Field(ge=2)
    index: int = Field(ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _in_range(self) -> "FoldSpec":
        if self.index >= self.k:
            raise ValueError(f"folds.index {self.index} is outside 0..{self.k - 1}")
        return self


def fold_parts(n: int, k: int, seed: int) -> list[list[int]]:
    """Indices ``0..n-1`` dealt into ``k`` disjoint folds that cover them: a permutation
    seeded by ``seed``, cut into ``k`` runs whose sizes differ by at most one; each fold
    sorted. The same ``(n, k, seed)`` always gives the same folds."""
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(part.tolist()) for part in np.array_split(order, k)]


class DatasetSpec(BaseModel):
    """A validated dataset description; build it with :func:`load_spec`.

    ``mean`` / ``std`` apply to images scaled to [0, 1]; they default to ImageNet's for 3
    channels and 0.5 / 0.5 otherwise. ``palette`` defaults to the PASCAL VOC colour map.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = "dataset"
    root: Path
    class_names: list[str] = Field(min_length=1)
    ignore_index: int = 255
    channels: int = Field(default=3, ge=1)
    mean: list[float] | None = None
    std: list[float] | None = None
    palette: list[RGB] | None = None
    class_weights: list[float] | None = None
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)
    mask: MaskSpec = Field(default_factory=MaskSpec)
    splits: dict[str, SplitSpec]
    holdout: HoldoutSpec | None = None
    folds: FoldSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetSpec":
        n, c = len(self.class_names), self.channels
        if self.mean is None:
            self.mean = list(IMAGENET_MEAN) if c == 3 else [0.5] * c
        if self.std is None:
            self.std = list(IMAGENET_STD) if c == 3 else [0.5] * c
        for key in ("mean", "std"):
            if len(getattr(self, key)) != c:
                raise ValueError(f"{key} has {len(getattr(self, key))} values for channels={c}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.palette is None:
            from ..report.visualize import default_palette

            self.palette = default_palette(n)
        for key in ("palette", "class_weights"):
            if getattr(self, key) is not None and len(getattr(self, key)) != n:
                raise ValueError(f"{key} has {len(getattr(self, key))} entries for {n} classes")
        if 0 <= self.ignore_index < n:
            raise ValueError(f"ignore_index {self.ignore_index} is one of the {n} class indices")
        m = self.mask
        if m.value_map is not None:
            bad = [v for v in m.value_map.values() if not (0 <= v < n or v == self.ignore_index)]
            if bad:
                raise ValueError(f"mask.value_map maps to {bad}, outside 0..{n - 1} and ignore_index")
        if m.colors is not None and len(m.colors) != n:
            raise ValueError(f"mask.colors has {len(m.colors)} colours for {n} classes")
        if m.encoding in ("threshold", "instances") and not 0 <= m.instance_class < n:
            raise ValueError(f"mask.instance_class {m.instance_class} is not a class index")
        if self.holdout is not None:
            if self.holdout.source not in self.splits:
                raise ValueError(f"holdout.from {self.holdout.source!r} is not a split")
            if self.holdout.target in self.splits:
                raise ValueError(f"holdout.to {self.holdout.target!r} is already a split")
        f = self.folds
        if f is not None:
            if f.source not in self.splits:
                raise ValueError(f"folds.from {f.source!r} is not a split")
            if f.target in self.splits or (self.holdout and f.target == self.holdout.target):
                raise ValueError(f"folds.to {f.target!r} is already a split")
            if self.holdout is not None and self.holdout.source == f.source:
                raise ValueError(f"holdout and folds both split {f.source!r}; drop the holdout")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> LabelSet:
        """Name and colour of each class; a one-logit model's: ``LabelSet.from_spec(spec, 1)``."""
        return LabelSet.from_spec(self)

    @property
    def split_names(self) -> list[str]:
        names = list(self.splits)
        if self.holdout is not None:
            names.append(self.holdout.target)
        if self.folds is not None:
            names.append(self.folds.target)
        return names

    def base_split(self, split: str) -> str:
        """The split of ``splits`` whose files ``split`` takes (itself, or the source of a
        holdout or fold split)."""
        for carve in (self.holdout, self.folds):
            if carve is not None and split in (carve.source, carve.target):
                return carve.source
        return split

    def resolve(self, split: str) -> list[Sample]:
        """The samples of ``split``, sorted by image path (holdout splits seeded).

        Raises:
            ConfigError: unknown split or bad template.
            DataError: no images found, a list file missing, a name not matching ``id_from``,
                or fewer images than folds.
        """
        h = self.holdout
        if h is not None and split in (h.source, h.target):
            samples = resolve_split(self, h.source)
            order = np.random.default_rng(h.seed).permutation(len(samples))
            held = set(order[: max(1, round(h.fraction * len(samples)))].tolist())
            keep_held = split == h.target
            return [s for i, s in enumerate(samples) if (i in held) == keep_held]
        f = self.folds
        if f is not None and split in (f.source, f.target):
            samples = resolve_split(self, f.source)
            if len(samples) < f.k:
                raise DataError(f"folds: split {f.source!r} has {len(samples)} image(s), "
                                f"fewer than its {f.k} folds")
            held = set(fold_parts(len(samples), f.k, f.seed)[f.index])
            return [s for i, s in enumerate(samples) if (i in held) == (split == f.target)]
        if split not in self.splits:
            raise ConfigError(f"splits: no split {split!r} in spec {self.name!r} "
                              f"(have {', '.join(self.split_names)})")
        return resolve_split(self, split)


# ---------------------------------------------------------------------------------------------
# Loading

def list_presets() -> list[str]:
    """Names of the built-in dataset presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a dataset spec must be a mapping")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(source: "DatasetSpec | dict | str | os.PathLike",
              root: str | os.PathLike | None = None) -> DatasetSpec:
    """Load and validate a dataset spec.

    Args:
        source: a YAML file path, a preset name (``"camvid"``, see :func:`list_presets`), a dict
            (optionally ``{"preset": name, ...overrides}``), or a spec (returned as is, with
            ``root`` replaced if given). A YAML file may itself say ``preset: camvid``.
        root: data folder; overrides the spec's ``root``. Relative roots resolve against the
            YAML file's folder (or the working directory for dicts and presets).

    Returns:
        The validated :class:`DatasetSpec` with an absolute ``root``.

    Raises:
        ConfigError: unknown preset, unreadable YAML, or invalid keys (the message names them).
    """
    if isinstance(source, DatasetSpec):
        return source if root is None else source.model_copy(update={"root": Path(root).resolve()})
    base_dir = Path.cwd()
    label = "dataset spec"
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if path.is_file():
            data, base_dir, label = _read_yaml(path), path.parent.resolve(), str(path)
        elif str(source) in list_presets():
            data = {"preset": str(source)}
        else:
            raise ConfigError(f"{source}: no such dataset spec file or preset "
                              f"(presets: {', '.join(list_presets())})")
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in list_presets():
            raise ConfigError(f"preset: unknown dataset preset {preset!r} "
                              f"(have {', '.join(list_presets())})")
        data = _merge(_read_yaml(PRESET_DIR / f"{preset}.yaml"), data)
        label = f"preset {preset!r}" if label == "dataset spec" else label
    if root is not None:
        data["root"] = root
    if data.get("root") is None:
        raise ConfigError(f"root: {label} needs a data folder (root=... or --root)")
    data["root"] = (base_dir / Path(data["root"]).expanduser()).resolve()
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
                             for err in e.errors())
        raise ConfigError(f"{label}: {problems}") from None
