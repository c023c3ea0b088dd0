"""Finding a split's samples on disk: the spec's globs, list files and path templates.

Every function takes a validated ``DatasetSpec`` (data/spec.py) and returns plain paths;
``DatasetSpec.resolve`` is the entry point (it adds the seeded holdout on top).
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..io.files import read_text

if TYPE_CHECKING:
    from .spec import DatasetSpec, SplitSpec

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Sample:
    """One image with its mask file(s) and optional valid-region mask (plain, picklable)."""

    id: str
    image: Path
    mask: Path | tuple[Path, ...] | None
    valid: Path | None = None


def _id_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{id\}|\*)", template)
    return re.compile("".join("(?P<id>.+?)" if p == "{id}" else ".*" if p == "*" else re.escape(p)
                              for p in parts))


def _fill(template: str, fields: dict[str, str], key: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{key}: bad template {template!r} ({e}); use {{id}}, {{stem}}, "
                          "{name} or {parent}") from e


def _under(root: Path, rel: str) -> Path:
    """A path written inside a split list file: a leading "/" still means the root (VOC's
    train_aug lists write ``/JPEGImages/x.jpg``)."""
    return root / rel.lstrip("/")


def spec_path(root: Path, rel: str) -> Path:
    """A path written in the spec: absolute as given (``~`` expanded), else under ``root``."""
    return root / Path(rel).expanduser()


def glob_files(pattern: str) -> tuple[list[Path], list[Path]]:
    """Files matching ``pattern`` (sorted), each real file once, and the other paths to a file
    already found. A recursive ``**`` follows directory links, so a link to a parent folder
    (``loop -> .``) would otherwise give every image again under ``loop/``, ``loop/loop/``..."""
    files, duplicates, seen = [], [], set()
    for path in sorted(Path(f) for f in glob.glob(pattern, recursive=True)):
        if not path.is_file():
            continue
        real = os.path.realpath(path)
        if real in seen:
            duplicates.append(path)
        else:
            seen.add(real)
            files.append(path)
    return files, duplicates


def glob_images(spec: DatasetSpec, s: SplitSpec) -> list[Path]:
    files, _ = glob_files(str(spec_path(spec.root, s.images)))
    return [p for p in files if not any(fnmatch.fnmatch(p.name, x) for x in s.exclude)]


def _list_line(line: str) -> tuple[str, str | None] | None:
    """One line of a split list: ``(id, None)``, ``(image, mask)`` or None (blank, comment).

    A line is one id, spaces included (``my image``). A pair is ``image<TAB>mask``, or VOC's
    train_aug form: two paths under the root, each starting with "/", separated by a space.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if "\t" in text:
        image, _, mask = text.partition("\t")
        return image.strip(), mask.strip() or None
    parts = text.split(" ")
    if len(parts) == 2 and all(p.startswith("/") for p in parts):
        return parts[0], parts[1]
    return text, None


def _list_pairs(spec: DatasetSpec, s: SplitSpec, key: str) -> list[tuple[Path, Path | None]]:
    pairs: list[tuple[Path, Path | None]] = []
    for list_file in [s.id_list] if isinstance(s.id_list, str) else s.id_list:
        path = spec_path(spec.root, list_file)
        if not path.is_file():
            raise DataError(f"{path}: split list not found ({key}.list)")
        before = len(pairs)
        for line in read_text(path, DataError).splitlines():
            entry = _list_line(line)
            if entry is None:
                continue
            if entry[1] is not None:
                pairs.append((_under(spec.root, entry[0]), _under(spec.root, entry[1])))
            else:
                rel = _fill(s.images, {"id": entry[0]}, f"{key}.images")
                pairs.append((spec_path(spec.root, rel), None))
        if len(pairs) == before:  # as an image glob that matches nothing
            raise DataError(f"{path}: split list has no ids ({key}.list)")
    return pairs


def resolve_split(spec: DatasetSpec, split: str) -> list[Sample]:
    s = spec.splits[split]
    key = f"splits.{split}"
    if s.id_list is None:
        images = glob_images(spec, s)
        if not images:
            raise DataError(f"{spec_path(spec.root, s.images)}: no images match ({key}.images)")
        pairs: list[tuple[Path, Path | None]] = [(p, None) for p in images]
    else:
        pairs = _list_pairs(spec, s, key)
    id_re = _id_regex(s.id_from) if s.id_from else None
    samples = []
    for image, explicit_mask in pairs:
        sample_id = image.stem
        if id_re is not None:
            m = id_re.fullmatch(image.name)
            if m is None:
                raise DataError(f"{image}: file name does not match {key}.id_from {s.id_from!r}")
            sample_id = m.group("id")
        fields = {"id": sample_id, "stem": image.stem, "name": image.name,
                  "parent": image.parent.name}
        mask: Path | tuple[Path, ...] | None = explicit_mask
        if mask is None and s.masks is not None:
            rel = _fill(s.masks, fields, f"{key}.masks")
            if spec.mask.encoding == "instances" and _GLOB_CHARS.search(rel):
                mask = tuple(glob_files(str(spec_path(spec.root, rel)))[0])
            else:
                mask = spec_path(spec.root, rel)
        valid = spec_path(spec.root, _fill(s.valid, fields, f"{key}.valid")) if s.valid else None
        samples.append(Sample(id=sample_id, image=image, mask=mask, valid=valid))
    if s.id_list is None:  # masks beside their images: the glob found them too
        masks = {x.mask for x in samples if isinstance(x.mask, Path)}
        samples = [x for x in samples if x.image not in masks]
    return samples


def mask_glob(spec: DatasetSpec, split: str) -> str | None:
    """A glob matching every mask file a split's template could name (for finding extras)."""
    s = spec.splits.get(split)
    if s is None or s.masks is None or s.id_list is not None:
        return None
    pattern = re.sub(r"\{(id|stem|name|parent)\}", "*", s.masks)
    return str(spec_path(spec.root, pattern))
