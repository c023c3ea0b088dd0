"""Predict a list of files: each input exactly once across ``torchrun`` processes, past
unreadable inputs, and resumable.

The inputs are numbered in the order given. Each one's output names (``<stem>_mask.png``)
depend on its own path only, never on its place in the list: the file's stem, and when
another input of the list has that stem too, the stem plus 8 hex digits of a hash of its
resolved path (``a_3f2c9d01``), so ``d1/a.png`` and ``d2/a.png`` keep their names in any
order, in any shard and in every process. Process ``r`` of ``n`` predicts inputs
``r, r + n, r + 2n, ...`` on its own device, all write into one folder, and rank 0 merges
everything into ``summary.json`` once every process is done.

The folder may hold the user's own files: only files that pixelwise wrote are replaced
(:mod:`pixelwise.io.outputs` keeps the record), others only with ``overwrite``. With
``skip_existing`` an input whose outputs are all there, whole and recorded as predicted from
that same input, is not predicted again (its summary entry is read back from them), so a
killed job rerun with the same line does only the rest.

An input that fails (not an image, truncated, empty, missing, out of memory, any error) is
listed with its reason under ``failed`` in the summary and reported through ``on_failure``;
the others go on, and the command exits non-zero at the end.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch.distributed as dist

from ..errors import DataError, PixelwiseError
from ..data.labels import class_areas, class_pixels
from ..data.readers import IMAGE_SUFFIXES
from ..io.files import atomic_write_json, remove_stale_temporaries
from ..io.outputs import Recorder, read_records, refuse_foreign
from .predict import Predictor, predict_image_file
from .uncertainty import uncertainty_names

# A process that finishes its shard early waits for the others at the final merge; prediction
# of a large set can take hours, longer than the collectives' default timeouts.
MERGE_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Job:
    """One input: its place in the full list, its file, its output stem and its kind."""

    index: int
    path: Path
    stem: str
    kind: str = "image"  # "image", "video" or "raster"


@dataclass(frozen=True)
class OutputOptions:
    """What to write per input (see ``pixelwise predict --help``)."""

    save_probs: bool = False
    probs_format: str = "npy"
    overlay_alpha: float = 0.5
    mask_video: bool = False
    frames_per_batch: int = 4
    block_size: int = 1024
    uncertainty: bool = False  # <stem>_entropy (and, with several views, _variance) maps
    variance: bool = False


@dataclass
class Results:
    """Summary entries of the inputs done, and the inputs that failed, by input index."""

    done: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    failed: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def plan_jobs(paths: Sequence[Path], kinds: Sequence[str] | None = None) -> list[Job]:
    """Number the inputs and give each its output stem (see the module docstring)."""
    paths = [Path(p) for p in paths]
    shared = Counter(p.stem for p in paths)
    return [Job(i, path, output_stem(path) if shared[path.stem] > 1 else path.stem,
                kinds[i] if kinds is not None else "image") for i, path in enumerate(paths)]


def output_stem(path: Path) -> str:
    """``<stem>_<8 hex digits>``: a stem that two inputs share, told apart by their paths."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()
    return f"{Path(path).stem}_{digest[:8]}"


def shard(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The inputs of process ``rank``: every ``world_size``-th, from ``rank`` on."""
    return list(jobs[rank::world_size])


def output_names(job: Job, opts: OutputOptions) -> list[str]:
    """The files that a finished input has in the output folder."""
    if job.kind == "video":
        from .video import video_outputs

        return video_outputs(job.stem, opts.mask_video)
    if job.kind == "raster":
        return [f"{job.stem}_mask.tif", *_uncertainty_names(job, opts, ".tif")]
    names = [f"{job.stem}_mask.png", f"{job.stem}_overlay.png"]
    if opts.save_probs:
        names.append(f"{job.stem}_probs.{'npy' if opts.probs_format == 'npy' else 'tif'}")
    return names + _uncertainty_names(job, opts, ".png")


def _uncertainty_names(job: Job, opts: OutputOptions, suffix: str) -> list[str]:
    return uncertainty_names(job.stem, suffix, opts.variance) if opts.uncertainty else []


def _predict(predictor: Predictor, job: Job, out: Path, opts: OutputOptions) -> dict[str, Any]:
    if job.kind == "video":
        from .video import predict_video

        return predict_video(predictor, job.path, out, job.stem, mask_video=opts.mask_video,
                             overlay_alpha=opts.overlay_alpha,
                             frames_per_batch=opts.frames_per_batch)
    if job.kind == "raster":
        from .raster import predict_raster

        names = output_names(job, opts)
        predict_raster(predictor, job.path, out / names[0], block_size=opts.block_size,
                       uncertainty=[out / n for n in names[1:]])
        return _raster_entry(job, names)
    return predict_image_file(predictor, job.path, out, job.stem, opts.save_probs,
                              opts.probs_format, opts.overlay_alpha)


def _raster_entry(job: Job, names: list[str]) -> dict[str, Any]:
    """A raster's summary entry: its mask and uncertainty files."""
    return {"input": str(job.path), "mask": names[0],
            **dict(zip(("entropy", "variance"), names[1:]))}


def _entry_from_outputs(predictor: Predictor, job: Job, out: Path,
                        opts: OutputOptions) -> dict[str, Any]:
    """The summary entry of an input predicted by an earlier run, read back from its files."""
    names = output_names(job, opts)
    if job.kind == "video":
        from .video import video_entry_from_outputs

        return video_entry_from_outputs(job.path, out, job.stem, opts.mask_video,
                                        predictor.class_names)
    if job.kind == "raster":
        return _raster_entry(job, names)
    from PIL import Image

    with Image.open(out / names[0]) as im:
        mask = np.asarray(im)
    entry = {"input": str(job.path), "height": int(mask.shape[0]), "width": int(mask.shape[1]),
             "mask": names[0], "overlay": names[1]}
    if opts.save_probs:
        entry["probs"] = names[2]
    entry.update(zip(("entropy", "variance"), _uncertainty_names(job, opts, ".png")))
    entry["classes"] = class_areas(class_pixels(mask, predictor.num_classes), predictor.class_names)
    return entry


def run_jobs(predictor: Predictor, jobs: Sequence[Job], output_dir: str | os.PathLike,
             opts: OutputOptions = OutputOptions(), skip_existing: bool = False,
             fail_fast: bool = False, on_failure: Callable[[Path, str], None] | None = None,
             progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
             summary_name: str | None = None) -> Results:
    """Predict ``jobs`` into ``output_dir``, going on past inputs that cannot be read.

    ``summary_name``: the summary this process writes afterwards (checked with the rest).

    Raises:
        PixelwiseError: before anything is written, when an output would replace an input or
            a file pixelwise did not write (unless ``overwrite``).
        DataError: with ``fail_fast``, at the first input that fails.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recorder = _prepare_outputs(jobs, out, opts, overwrite, summary_name)
    records = read_records(out) if skip_existing else {}
    results = Results()
    for done, job in enumerate(jobs, start=1):
        try:
            entry = None
            if skip_existing and _finished_before(job, out, opts, records):
                try:
                    entry = _entry_from_outputs(predictor, job, out, opts)
                except (PixelwiseError, ValueError, OSError):
                    entry = None  # unreadable leftovers: predict again
            if entry is None:
                recorder.claim(output_names(job, opts))
                entry = _predict(predictor, job, out, opts)
                recorder.completed(output_names(job, opts), job.path)
            results.done.append((job.index, job.kind, entry))
        except Exception as e:  # noqa: BLE001  (one input's failure must not stop the rest)
            message = failure_message(job.path, e)
            if fail_fast:
                raise DataError(message) from e
            results.failed.append((job.index, {"input": str(job.path), "error": message}))
            if on_failure is not None:
                on_failure(job.path, message)
        if progress is not None:
            progress(done, len(jobs))
    return results


def failure_message(path: Path, error: Exception) -> str:
    """One line for an input that failed, naming it. Errors outside pixelwise's own family
    and ValueError / OSError (out of memory above all) name their type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, MemoryError) or "can't allocate" in text or "not enough memory" in text:
        text = f"out of memory ({text or 'MemoryError'})"
    elif not isinstance(error, (PixelwiseError, ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def _prepare_outputs(jobs: Sequence[Job], out: Path, opts: OutputOptions, overwrite: bool,
                     summary_name: str | None) -> Recorder:
    """Refuse outputs that would destroy an input or a user's file; clear the temporaries
    that a killed run left of these outputs; claim the summary."""
    names = {n for job in jobs for n in output_names(job, opts)}
    names |= {summary_name} if summary_name else set()
    folder = out.resolve()
    for job in jobs:
        if job.path.resolve().parent == folder and job.path.name in names:
            raise PixelwiseError(f"{job.path}: this input would be replaced by an output of "
                                 f"the same name in {out}; choose another output folder")
    refuse_foreign(out, names, read_records(out), overwrite)
    remove_stale_temporaries(out, names)
    recorder = Recorder(out)
    recorder.claim([summary_name] if summary_name else [])
    return recorder


def _finished_before(job: Job, out: Path, opts: OutputOptions,
                     records: dict[str, str | None]) -> bool:
    """All of the input's outputs are there, recorded as completed from this very input."""
    source = str(job.path.resolve())
    return all((out / n).is_file() and records.get(n) == source for n in output_names(job, opts))


def write_summary(predictor: Predictor, results: Results, output_dir: str | os.PathLike,
                  name: str = "summary.json") -> dict[str, Any]:
    """Write the summary (atomically) from the results of every process; returns it."""
    names = predictor.class_names
    by_kind: dict[str, list] = {"image": [], "video": [], "raster": []}
    for _, kind, entry in sorted(results.done, key=lambda r: r[0]):
        by_kind[kind].append(entry)
    totals = np.zeros(len(names), dtype=np.int64)
    for entry in by_kind["image"]:
        totals += np.array([entry["classes"][n]["pixels"] for n in names], dtype=np.int64)
    summary = {
        "class_names": names,
        "palette": [list(c) for c in predictor.palette],
        "threshold": predictor.threshold if predictor.binary else None,
        "images": by_kind["image"],
        "total": class_areas(totals, names),
        "videos": by_kind["video"],
        "rasters": by_kind["raster"],
        "failed": [f for _, f in sorted(results.failed, key=lambda r: r[0])],
    }
    atomic_write_json(Path(output_dir) / name, summary)
    return summary


@dataclass(frozen=True)
class Group:
    """This process's place among the ``torchrun`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False


def join_group() -> Group:
    """Join the ``torchrun`` job, if there is one, with a gloo group used only to merge the
    results (each process predicts on its own device; nothing else is exchanged)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return Group()
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", timeout=MERGE_TIMEOUT)
    return Group(rank, world_size, local_rank, created)


def gather(results: Results, group: Group) -> Results:
    """Every process's results, on every process."""
    if group.world_size <= 1:
        return results
    parts: list[Results | None] = [None] * group.world_size
    dist.all_gather_object(parts, results)
    return Results(done=[d for p in parts for d in p.done],
                   failed=[f for p in parts for f in p.failed])


def leave_group(group: Group) -> None:
    if group.created and dist.is_initialized():
        dist.destroy_process_group()


def predict_paths(predictor: Predictor, inputs: Iterable[str | os.PathLike],
                  output_dir: str | os.PathLike, save_probs: bool = False,
                  probs_format: str = "npy", overlay_alpha: float = 0.5,
                  progress: Callable[[int, int], None] | None = None,
                  skip_existing: bool = False, fail_fast: bool = False,
                  overwrite: bool = False) -> dict[str, Any]:
    """Predict every image among ``inputs`` and write the results to ``output_dir``.

    Per image ``<stem>``: ``<stem>_mask.png`` (palette PNG of class indices),
    ``<stem>_overlay.png`` (colours over the image) and, with ``save_probs``,
    ``<stem>_probs.npy`` (float32 ``(K, H, W)``) or ``<stem>_probs.tif`` (uint16, probability
    x 65535). ``summary.json`` lists every image with its class areas, the totals, and under
    ``failed`` each input that could not be predicted with the reason.

    Args:
        predictor: a :class:`~pixelwise.inference.predict.Predictor`.
        inputs: files, folders and glob patterns.
        output_dir: created if missing.
        save_probs: also write probabilities.
        probs_format: ``"npy"`` or ``"tiff16"``.
        overlay_alpha: opacity of the mask colours in the overlay.
        progress: called as ``progress(done_images, total_images)``.
        skip_existing: keep the outputs of images predicted before (summary from their masks).
        fail_fast: raise at the first unreadable input instead of going on.
        overwrite: replace files in ``output_dir`` that pixelwise did not write (refused
            otherwise: :mod:`pixelwise.io.outputs`).

    Returns:
        The summary dict (also written as ``summary.json``).
    """
    if probs_format not in ("npy", "tiff16"):
        raise ValueError(f"probs_format must be 'npy' or 'tiff16', got {probs_format!r}")
    out = Path(output_dir)
    opts = OutputOptions(save_probs=save_probs, probs_format=probs_format,
                         overlay_alpha=overlay_alpha)
    results = run_jobs(predictor, plan_jobs(collect_inputs(inputs)), out, opts,
                       skip_existing=skip_existing, fail_fast=fail_fast, progress=progress,
                       overwrite=overwrite, summary_name="summary.json")
    return write_summary(predictor, results, out)


def collect_inputs(inputs: Iterable[str | os.PathLike],
                   suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Expand files, folders (their images, sorted) and glob patterns into image paths
    (``suffixes``: the file endings that folders and globs contribute).

    A file name that is not there (no glob characters) is kept: it fails alone when it is
    predicted, reported with the other failed inputs, and does not stop the rest.

    Raises:
        DataError: a glob pattern that matches no image, or a folder without images.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise DataError(f"{path}: folder holds no images "
                                f"({', '.join(suffixes)})")
            paths.extend(found)
        elif path.is_file() or not re.search(r"[*?\[]", str(item)):
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            matches = [p for p in matches if p.is_file() and p.suffix.lower() in suffixes]
            if not matches:
                raise DataError(f"{item}: no such file or folder, and no images match it")
            paths.extend(matches)
    seen, unique = set(), []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique
