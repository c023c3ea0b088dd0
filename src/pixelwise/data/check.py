"""Check a dataset before training: find every problem, each naming its file, and statistics.

:func:`quick_check` is cheap (file existence, image/mask pairing, sizes from headers, pixel
limits) and is what training runs first. :func:`check_dataset` also decodes every file:
truncated images, label values outside the spec, class pixel frequencies, median-frequency
class weights and channel mean/std.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, PixelwiseError
from .preprocess import scale_to_unit
from .dataset import load_sample
from .readers import image_size
from .listing import Sample, glob_files, glob_images, mask_glob, resolve_split, spec_path
from .spec import DatasetSpec, SplitSpec, load_spec
from .annotations import format_summary, is_annotation, sample_problems, split_problems
from .annotations import split_summary


def _header_problems(spec: DatasetSpec, samples: list[Sample],
                     unreadable: set[Path] | None = None) -> tuple[list[str], set[Path]]:
    """Problems found from headers, and the images of the samples that have one.

    Files that exist but whose header cannot be read are added to ``unreadable``.
    """
    problems: list[str] = []
    bad: set[Path] = set()
    unreadable = set() if unreadable is None else unreadable
    for s in samples:
        before = len(problems)
        try:
            hw = image_size(s.image, spec.max_pixels)
        except DataError as e:
            problems.append(str(e))
            bad.add(s.image)
            if Path(s.image).is_file():
                unreadable.add(Path(s.image))
            continue
        masks = s.mask if isinstance(s.mask, tuple) else () if s.mask is None else (s.mask,)
        if is_annotation(spec) and s.mask is not None:  # shapes, not a raster: check them
            problems += sample_problems(spec, s, hw)
            masks = ()
        if isinstance(s.mask, tuple) and not s.mask:
            problems.append(f"{s.image}: missing mask (no instance mask files found)")
        for path, what in [(m, "mask") for m in masks] + [(s.valid, "valid-region mask")]:
            if path is None:
                continue
            if not Path(path).is_file():
                problems.append(f"{path}: missing {what} for image {s.image}")
                continue
            try:
                other = image_size(path, spec.max_pixels)
            except DataError as e:
                problems.append(str(e))
                unreadable.add(Path(path))
                continue
            if other != hw:
                problems.append(f"{path}: size {other[1]}x{other[0]} does not match its image "
                                f"{s.image} ({hw[1]}x{hw[0]})")
        if len(problems) > before:
            bad.add(s.image)
    return problems, bad


def _extra_masks(spec: DatasetSpec, split: str) -> list[str]:
    base = spec.base_split(split)
    pattern = mask_glob(spec, base)
    if pattern is None:
        return []
    # Splits may share one mask folder (train/ and val/ images, one masks/ folder): a mask is
    # extra only when no split's image names it.
    referenced = set()
    for name in spec.splits:
        try:
            samples = resolve_split(spec, name)
        except PixelwiseError:
            continue  # reported by that split's own check
        for s in samples:
            referenced.update(s.mask if isinstance(s.mask, tuple) else [s.mask])
    found = set(glob_files(pattern)[0])
    return [f"{p}: extra mask with no matching image (split {base!r} or any other)"
            for p in sorted(found - referenced)]


def _symlink_problems(spec: DatasetSpec, split: str) -> list[str]:
    """Image or mask links that lead nowhere (the split's globs skip them as non-files), and
    files reached twice through directory links (the globs count them once)."""
    import errno
    import glob

    s = spec.splits[spec.base_split(split)]
    patterns = [mask_glob(spec, spec.base_split(split))]
    if s.id_list is None:
        patterns.append(str(spec_path(spec.root, s.images)))
    problems = []
    for path in sorted({p for pattern in patterns if pattern
                        for p in glob.glob(pattern, recursive=True)}):
        if not os.path.islink(path) or os.path.exists(path):
            continue
        try:
            os.stat(path)
        except OSError as e:
            what = "symlink loop" if e.errno == errno.ELOOP else \
                f"broken symlink (to {os.readlink(path)})"
            problems.append(f"{path}: {what}, skipped by split {split!r}")
    for pattern in patterns:
        duplicates = glob_files(pattern)[1] if pattern else []
        if duplicates:
            problems.append(f"{duplicates[0]}: the same file as another match of {pattern} "
                            f"(through a directory link); {len(duplicates)} such path(s) "
                            f"counted once in split {split!r}")
    return problems


def _split_problems(spec: DatasetSpec, split: str, unreadable: set[Path] | None = None
                    ) -> tuple[list[Sample], list[str], set[Path]]:
    try:
        samples = spec.resolve(split)
    except PixelwiseError as e:
        return [], [str(e)], set()
    problems, bad = _header_problems(spec, samples, unreadable)
    problems += _symlink_problems(spec, split) + _extra_masks(spec, split)
    if is_annotation(spec):
        problems += split_problems(spec, samples, _all_samples(spec))
    return samples, list(dict.fromkeys(problems)), bad


def _all_samples(spec: DatasetSpec) -> list[Sample]:
    out: list[Sample] = []
    for name in spec.splits:
        try:
            out += resolve_split(spec, name)
        except PixelwiseError:
            continue  # reported by that split's own check
    return out


def quick_check(spec: DatasetSpec | dict | str, split: str) -> int:
    """Cheap check of one split: files exist, images pair with masks, header sizes agree,
    no image over the pixel limit, no mask without an image.

    Args:
        spec: a dataset spec (or anything :func:`load_spec` accepts).
        split: split name.

    Returns:
        The number of samples in the split.

    Raises:
        DataError: listing every problem found, one per line, each naming its file.
    """
    spec = load_spec(spec)
    samples, problems, _ = _split_problems(spec, split)
    if not samples and split in spec.split_names:
        empty = nothing_found(spec)
        if empty is not None:
            raise DataError(empty)
    if problems:
        raise DataError(f"{len(problems)} problem(s) in split {split!r} of dataset "
                        f"{spec.name!r}:\n" + "\n".join(f"  - {p}" for p in problems))
    return len(samples)


def small_images(spec: DatasetSpec, samples: list[Sample], minimum: int) -> list[str]:
    """A problem for each image with a side under ``minimum`` pixels (headers only): whole
    images that a model taking at least ``minimum`` pixels per side would refuse."""
    problems = []
    for s in samples:
        try:
            height, width = image_size(s.image, spec.max_pixels)
        except DataError:
            continue  # unreadable: the header check reports it
        if min(height, width) < minimum:
            problems.append(f"{s.image}: {width}x{height} is under the model's smallest input "
                            f"({minimum} pixels a side)")
    return problems


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> list[float]:
    """Median-frequency class weights (Eigen & Fergus 2015, as used by SegNet).

    ``freq(c) = pixels of class c / pixels of the images where c is present``;
    ``weight(c) = median(freq) / freq(c)``. A class that never appears gets weight 0.
    """
    present = present_pixels > 0
    freq = np.where(present, class_pixels / np.maximum(present_pixels, 1), 0.0)
    if not present.any():
        return [0.0] * len(freq)
    med = np.median(freq[present])
    return [float(med / f) if f > 0 else 0.0 for f in freq]


@dataclass
class SplitStats:
    """Statistics of one split (pixel counts exclude ignored pixels)."""

    count: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0  # files whose header or pixels cannot be read
    class_pixels: list[int] = field(default_factory=list)
    class_frequency: list[float] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    ignored_pixels: int = 0
    # labelled pixels of any class but 0, and those of them at most THIN_DISTANCE px from a
    # pixel that is not (the planner's thin-structure rule)
    foreground_pixels: int = 0
    near_background_pixels: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass
class DataReport:
    """The result of :func:`check_dataset`: statistics per split and every problem found."""

    name: str
    class_names: list[str]
    splits: dict[str, SplitStats]
    problems: list[str]
    skipped: list[str] = field(default_factory=list)
    annotations: dict[str, dict] = field(default_factory=dict)  # per split: shapes per class

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self)


THIN_DISTANCE = 2  # px


def near_background(mask: np.ndarray, ignore_index: int) -> tuple[int, int]:
    """(foreground pixels, those at most :data:`THIN_DISTANCE` px from a non-foreground one)."""
    from scipy import ndimage

    fg = (mask != 0) & (mask != ignore_index)
    return int(fg.sum()), int((ndimage.distance_transform_edt(fg)[fg] <= THIN_DISTANCE).sum())


def _split_stats(spec: DatasetSpec, samples: list[Sample], problems: list[str]) -> SplitStats:
    n = spec.num_classes
    class_pixels = np.zeros(n, dtype=np.int64)
    present_pixels = np.zeros(n, dtype=np.int64)
    sizes: Counter = Counter()
    ch_sum = np.zeros(spec.channels)
    ch_sq = np.zeros(spec.channels)
    ch_n = 0
    ignored = failed = foreground = near = 0
    for s in samples:
        try:
            image, mask = load_sample(spec, s)
        except PixelwiseError as e:
            problems.append(str(e))
            failed += 1
            continue
        sizes[f"{mask.shape[0]}x{mask.shape[1]}"] += 1
        labelled = mask[mask != spec.ignore_index]
        ignored += mask.size - labelled.size
        if labelled.size == 0 and s.mask is not None:
            # Nothing to learn from or score: usually a mask encoding that maps every value to
            # the ignore index. (A split without masks is unlabelled on purpose.)
            problems.append(f"{s.mask if isinstance(s.mask, Path) else s.image}: no labelled "
                            f"pixel (all {mask.size} are ignore_index {spec.ignore_index} after "
                            f"the mask encoding{' and valid region' if s.valid else ''})")
        counts = np.bincount(labelled, minlength=n)[:n]
        class_pixels += counts
        fg, fg_near = near_background(mask, spec.ignore_index)
        foreground, near = foreground + fg, near + fg_near
        present_pixels[counts > 0] += labelled.size
        unit = scale_to_unit(image).reshape(-1, image.shape[-1]).astype(np.float64)
        ch_sum += unit.sum(axis=0)
        ch_sq += (unit**2).sum(axis=0)
        ch_n += unit.shape[0]
    total = max(int(class_pixels.sum()), 1)
    mean = ch_sum / max(ch_n, 1)
    std = np.sqrt(np.maximum(ch_sq / max(ch_n, 1) - mean**2, 0))
    return SplitStats(
        count=len(samples), sizes=dict(sizes), class_pixels=class_pixels.tolist(),
        class_frequency=(class_pixels / total).tolist(),
        class_weights=median_frequency_weights(class_pixels, present_pixels),
        ignored_pixels=int(ignored), foreground_pixels=foreground,
        near_background_pixels=near, mean=mean.tolist(), std=std.tolist(), unreadable=failed)


def check_dataset(spec: DatasetSpec | dict | str, splits: list[str] | None = None,
                  max_images: int | None = None, min_size: int | None = None) -> DataReport:
    """Full check: decode every image and mask of the splits and gather statistics.

    Args:
        spec: a dataset spec (or anything :func:`load_spec` accepts).
        splits: split names (default: all, holdout splits included).
        max_images: decode at most this many samples per split (statistics on a prefix;
            the cheap checks still cover every file).
        min_size: the smallest image side the model takes; smaller images are problems.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False when any problem was found.
    """
    spec = load_spec(spec)
    problems: list[str] = []
    stats = {}
    skipped = []
    annotations: dict[str, dict] = {}
    empty = nothing_found(spec)
    if empty is not None:
        return DataReport(name=spec.name, class_names=list(spec.class_names), splits={},
                          problems=[empty])
    for split in splits or spec.split_names:
        base = spec.splits[spec.base_split(split)] if split in spec.split_names else None
        if not splits and base is not None and base.optional and _absent(spec, base):
            # A preset's optional split (CamVid's test) that this copy does not have is not a
            # problem unless it was asked for by name.
            skipped.append(split)
            continue
        unreadable: set[Path] = set()
        samples, found, bad = _split_problems(spec, split, unreadable)
        problems += found + (small_images(spec, samples, min_size) if min_size else [])
        # Samples already reported by the cheap check are not decoded again.
        decodable = [s for s in samples if s.image not in bad]
        stats[split] = _split_stats(spec, decodable[:max_images], problems)
        stats[split].count = len(samples)
        stats[split].unreadable += len(unreadable)
        if is_annotation(spec):
            annotations[split] = split_summary(spec, samples)
    return DataReport(name=spec.name, class_names=list(spec.class_names), splits=stats,
                      problems=list(dict.fromkeys(problems)), skipped=skipped,
                      annotations=annotations)


def _absent(spec: DatasetSpec, s: SplitSpec) -> bool:
    """True when a split has no files at all here (no image matches, no list file)."""
    if s.id_list is None:
        return not glob_images(spec, s)
    lists = [s.id_list] if isinstance(s.id_list, str) else s.id_list
    return not any(spec_path(spec.root, name).is_file() for name in lists)


def _tried(spec: DatasetSpec, s: SplitSpec) -> str:
    if s.id_list is None:
        return str(spec_path(spec.root, s.images))
    lists = [s.id_list] if isinstance(s.id_list, str) else s.id_list
    return " or ".join(f"list {spec_path(spec.root, name)}" for name in lists)


def nothing_found(spec: DatasetSpec) -> str | None:
    """The error for a spec that matches no image in any split, naming the globs and lists
    tried (usually a wrong ``root``); None when some split has files."""
    if not all(_absent(spec, s) for s in spec.splits.values()):
        return None
    tried = "; ".join(f"{name}: {_tried(spec, s)}" for name, s in spec.splits.items())
    return (f"dataset {spec.name!r}: no image matches any split under {spec.root} "
            f"(is the root right?); tried {tried}")


def format_report(report: DataReport) -> str:
    """Human-readable text of a :class:`DataReport`."""
    lines = [f"dataset {report.name}: {len(report.class_names)} classes"]
    if report.skipped:
        lines.append(f"skipped splits with no files here: {', '.join(report.skipped)}")
    for split, st in report.splits.items():
        if st.count == 0:
            lines.append(f"\n[{split}] no samples")
            continue
        sizes = ", ".join(f"{k} ({v})" for k, v in sorted(st.sizes.items(), key=lambda kv: -kv[1]))
        lines.append(f"\n[{split}] {st.count} samples; sizes: {sizes or '-'}; "
                     f"unreadable files: {st.unreadable}")
        lines.append(f"  channel mean {[round(v, 4) for v in st.mean]} "
                     f"std {[round(v, 4) for v in st.std]}")
        lines.append(f"  ignored pixels: {st.ignored_pixels}")
        lines.append(f"  {'class':<20}{'pixels':>14}{'frequency':>11}{'weight':>9}")
        for name, px, fr, w in zip(report.class_names, st.class_pixels, st.class_frequency,
                                   st.class_weights):
            lines.append(f"  {name:<20}{px:>14}{fr:>11.4f}{w:>9.4f}")
        if split in report.annotations:
            lines += format_summary(report.annotations[split])
    if report.problems:
        lines.append(f"\n{len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("\nno problems found")
    return "\n".join(lines)
