"""Annotation files as masks: LabelMe JSON, COCO JSON and CVAT for images XML.

A spec with ``mask: {encoding: labelme | coco | cvat}`` names, per split, the LabelMe JSON
of each image (a ``masks`` template, e.g. ``"json/{stem}.json"``) or the split's one COCO or
CVAT file (``masks: "annotations/instances_train.json"``). :func:`annotation_mask` draws an
image's shapes into class indices (rules in :mod:`.draw`, overlaps in :mod:`.shapes`);
:func:`sample_problems` and :func:`split_problems` are what ``pixelwise data check`` reports.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import DataError
from . import coco, cvat, labelme
from .shapes import Record, load_split_file, match, rasterise, record_problems, shape_value

if TYPE_CHECKING:
    from ..listing import Sample
    from ..spec import DatasetSpec

ENCODINGS = ("labelme", "coco", "cvat")
SPLIT_FILE_READERS = {"coco": coco.parse, "cvat": cvat.parse}


def is_annotation(spec: DatasetSpec) -> bool:
    return spec.mask.encoding in ENCODINGS


def record_for(spec: DatasetSpec, sample: Sample) -> Record:
    """The shapes of a sample's image.

    Raises:
        DataError: no annotation file, a malformed one, or no entry for the image in it.
    """
    if sample.mask is None or isinstance(sample.mask, tuple):
        raise DataError(f"{sample.image}: no annotation file (the split has no 'masks')")
    if spec.mask.encoding == "labelme":
        return labelme.read(sample.mask)
    records = load_split_file(sample.mask, SPLIT_FILE_READERS[spec.mask.encoding])
    record = match(records, Path(sample.image))
    if record is None:
        raise DataError(f"{sample.mask}: no entry for image {sample.image}")
    return record


def annotation_mask(spec: DatasetSpec, sample: Sample, hw: tuple[int, int]) -> np.ndarray:
    """A sample's shapes as ``(H, W)`` int64 class indices (``ignore_index`` where ignored).

    Raises:
        DataError: see :func:`record_for` and :func:`.shapes.rasterise`.
    """
    return rasterise(spec, record_for(spec, sample), Path(sample.image), hw)


def sample_problems(spec: DatasetSpec, sample: Sample, hw: tuple[int, int]) -> list[str]:
    """Every problem of one sample's annotations, without drawing them."""
    try:
        record = record_for(spec, sample)
    except DataError as e:
        return [str(e)]
    return record_problems(spec, record, Path(sample.image), hw)


def split_problems(spec: DatasetSpec, samples: list[Sample], everyone: list[Sample]) -> list[str]:
    """Images that a split's COCO or CVAT file lists but no sample has, among the samples of
    every split (``everyone``: splits may share one file)."""
    reader = SPLIT_FILE_READERS.get(spec.mask.encoding)
    if reader is None:
        return []
    problems = []
    for path in sorted({s.mask for s in samples if isinstance(s.mask, Path)}):
        try:
            records = load_split_file(path, reader)
        except DataError:
            continue  # reported per sample
        found = {id(match(records, Path(s.image))) for s in everyone if s.mask == path}
        for group in records.values():
            problems += [f"{path}: image {r.name!r} is annotated but missing from the "
                         "split's images" for r in group if id(r) not in found]
    return problems


def split_summary(spec: DatasetSpec, samples: list[Sample]) -> dict:
    """Shapes per class (``"__ignore__"`` for ignored ones) and the images without shapes."""
    counts: Counter = Counter()
    unannotated = []
    for s in samples:
        try:
            record = record_for(spec, s)
        except DataError:
            continue  # reported as a problem
        if not record.shapes:
            unannotated.append(str(s.image))
        for shape in record.shapes:
            value = shape_value(spec, shape)
            if value is not None:
                name = "__ignore__" if value == spec.ignore_index else spec.class_names[value]
                counts[name] += 1
    shapes = {n: counts[n] for n in [*spec.class_names, "__ignore__"] if counts[n]}
    return {"shapes": shapes, "unannotated": unannotated}


def format_summary(summary: dict) -> list[str]:
    """Report lines of :func:`split_summary` for ``pixelwise data check``."""
    shapes = ", ".join(f"{n} {c}" for n, c in summary["shapes"].items()) or "none"
    lines = [f"  shapes per class: {shapes}"]
    images = summary["unannotated"]
    lines.append(f"  images without annotations: {len(images)}")
    lines += [f"    {p}" for p in images[:20]] + (["    ..."] if len(images) > 20 else [])
    return lines
