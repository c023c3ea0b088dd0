"""Predict videos frame by frame: an overlay video with the input's frame count and frame
rate, a per-frame CSV of class areas, optionally a lossless mask video, and frames/s.

Frames are decoded as a stream and go through the model ``frames_per_batch`` at a time, by
the same :meth:`Predictor.predict_batch` as images (so tiling and test-time augmentation
apply), then are encoded and dropped: memory stays bounded whatever the video's length.
Decoding and encoding use PyAV (FFmpeg's libraries, in wheels), the optional extra
``video``. The overlay is H.264 in MP4 (4:2:0 when the size is even, else 4:4:4); the mask
video is FFV1 in Matroska, lossless, so its colours map back to the classes exactly.
"""
from __future__ import annotations

import csv
import os
import time
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError, PixelwiseError
from ..io.files import atomic_path
from ..data.labels import class_areas, class_pixels
from ..report.visualize import colorize, overlay
from .predict import Predictor

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _av():
    try:
        import av
    except ModuleNotFoundError:
        raise PixelwiseError("video input needs PyAV: pip install 'pixelwise[video]'") from None
    return av


def video_outputs(stem: str, mask_video: bool = False) -> list[str]:
    """The files :func:`predict_video` writes for ``stem``."""
    return [f"{stem}_overlay.mp4", f"{stem}_areas.csv"] + ([f"{stem}_mask.mkv"] if mask_video
                                                           else [])


def _frame_batches(path: Path, size: int) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """``(stream, [rgb frames])`` batches of one video, decoded as a stream."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            batch: list[np.ndarray] = []
            for frame in container.decode(stream):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == size:
                    yield stream, batch
                    batch = []
            if batch:
                yield stream, batch
    except av.FFmpegError as e:
        raise DataError(f"{path}: not a readable video ({e})") from e


def frame_rate(stream) -> Fraction:
    """A stream's average frame rate (what players show), else its guessed rate."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise DataError(f"{stream.container.name}: video has no frame rate")
    return Fraction(rate)


class _Encoder:
    """One output video: frames in, packets muxed into a (temporary) file."""

    def __init__(self, path: Path, fmt: str, codec: str, rate: Fraction, width: int,
                 height: int, pix_fmt: str, options: dict[str, str] | None = None):
        av = _av()
        self.container = av.open(str(path), mode="w", format=fmt)
        self.stream = self.container.add_stream(codec, rate=rate, options=options or {})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.av, self.count = av, 0

    def write(self, rgb: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush delayed frames
        self.container.close()


def _open_outputs(stack: ExitStack, out: Path, stem: str, mask_video: bool, rate: Fraction,
                  height: int, width: int) -> tuple[list[_Encoder], Any]:
    names = video_outputs(stem, mask_video)
    tmp = [stack.enter_context(atomic_path(out / name)) for name in names]
    even = height % 2 == 0 and width % 2 == 0
    encoders = [_Encoder(tmp[0], "mp4", "libx264", rate, width, height,
                         "yuv420p" if even else "yuv444p", {"crf": "18"})]
    if mask_video:
        encoders.append(_Encoder(tmp[2], "matroska", "ffv1", rate, width, height, "bgr0"))
    csv_file = stack.enter_context(open(tmp[1], "w", newline=""))
    return encoders, csv_file


def predict_video(predictor: Predictor, path: str | os.PathLike, output_dir: str | os.PathLike,
                  stem: str | None = None, mask_video: bool = False, overlay_alpha: float = 0.5,
                  frames_per_batch: int = 4,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Predict every frame of a video and write its outputs (see the module docstring).

    Args:
        predictor: a :class:`Predictor` (its tiling and TTA settings apply to each frame).
        path: the video file.
        output_dir: where ``<stem>_overlay.mp4``, ``<stem>_areas.csv`` (columns ``frame``,
            ``time_s`` and one per class: its pixels) and ``<stem>_mask.mkv`` go.
        stem: output name stem (default: the video's).
        mask_video: also write the mask video.
        overlay_alpha: opacity of the class colours over the frames.
        frames_per_batch: frames per forward pass.
        progress: called with the number of frames done.

    Returns:
        The ``summary.json`` entry: frames, frame rate, size, output names, class areas
        over all frames, and the frames/s of the whole pass (decode, predict, encode).

    Raises:
        DataError: not a readable video.
    """
    path, out = Path(path), Path(output_dir)
    stem = stem or path.stem
    names = predictor.class_names
    totals = np.zeros(len(names), dtype=np.int64)
    start = time.perf_counter()
    try:
        frames, rate, size = _predict_frames(predictor, path, out, stem, mask_video,
                                             overlay_alpha, frames_per_batch, totals, progress)
    except _av().FFmpegError as e:  # an encoder or muxer error
        raise DataError(f"{path}: video could not be written ({e})") from e
    seconds = time.perf_counter() - start
    entry = _entry(path, stem, mask_video, names, totals, frames, rate, size)
    entry["frames_per_s"] = round(frames / max(seconds, 1e-9), 3)
    return entry


def _predict_frames(predictor: Predictor, path: Path, out: Path, stem: str, mask_video: bool,
                    overlay_alpha: float, frames_per_batch: int, totals: np.ndarray,
                    progress: Callable[[int], None] | None) -> tuple[int, Fraction, tuple]:
    names, palette = predictor.class_names, predictor.palette
    frames, rate, size = 0, Fraction(0), (0, 0)
    with ExitStack() as stack:
        encoders = writer = None
        for stream, batch in _frame_batches(path, frames_per_batch):
            if encoders is None:
                rate, size = frame_rate(stream), batch[0].shape[:2]
                encoders, csv_file = _open_outputs(stack, out, stem, mask_video, rate, *size)
                writer = csv.writer(csv_file)
                writer.writerow(["frame", "time_s", *names])
            for rgb, pred in zip(batch, predictor.predict_batch(batch)):
                counts = class_pixels(pred.mask, len(names))
                totals += counts
                writer.writerow([frames, f"{float(frames / rate):.6f}", *counts.tolist()])
                encoders[0].write(overlay(rgb, pred.mask, palette, overlay_alpha))
                if mask_video:
                    encoders[1].write(colorize(pred.mask, palette))
                frames += 1
            if progress is not None:
                progress(frames)
        if encoders is None:
            raise DataError(f"{path}: video has no frames")
        for encoder in encoders:
            encoder.close()
    return frames, rate, size


def _entry(path: Path, stem: str, mask_video: bool, names: list[str], totals: np.ndarray,
           frames: int, rate: Fraction, size: tuple[int, int]) -> dict[str, Any]:
    outputs = video_outputs(stem, mask_video)
    entry = {"input": str(path), "frames": frames, "frame_rate": float(rate),
             "height": int(size[0]), "width": int(size[1]), "overlay": outputs[0],
             "areas": outputs[1]}
    if mask_video:
        entry["mask"] = outputs[2]
    entry["classes"] = class_areas(totals, names)
    return entry


def video_entry_from_outputs(path: Path, out: Path, stem: str, mask_video: bool,
                             names: list[str]) -> dict[str, Any]:
    """The summary entry of a video predicted before, read back from its outputs."""
    outputs = video_outputs(stem, mask_video)
    with open(out / outputs[1], newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["frame", "time_s", *names]:  # empty: a run killed early
        raise DataError(f"{out / outputs[1]}: no header, or columns that are not this "
                        f"model's classes")
    totals = np.array([[int(v) for v in row[2:]] for row in rows[1:]],
                      dtype=np.int64).reshape(-1, len(names)).sum(axis=0)
    with _av().open(str(out / outputs[0])) as container:
        stream = container.streams.video[0]
        rate, size = frame_rate(stream), (stream.height, stream.width)
    return _entry(path, stem, mask_video, names, totals, len(rows) - 1, rate, size)


def measure_fps(predictor: Predictor, path: str | os.PathLike, frames_per_batch: int = 4,
                max_frames: int | None = None) -> dict[str, Any]:
    """Frames per second of prediction on a video (decoding timed apart, nothing written).

    Returns:
        ``frames``, ``height``, ``width``, ``predict_s``, ``decode_s``, ``frames_per_s``
        (prediction alone) and ``end_to_end_frames_per_s`` (decoding included).
    """
    frames, predict_s, size = 0, 0.0, (0, 0)
    start = time.perf_counter()
    for _, batch in _frame_batches(Path(path), frames_per_batch):
        if max_frames is not None:
            batch = batch[: max_frames - frames]
        t0 = time.perf_counter()
        predictor.predict_batch(batch)
        predict_s += time.perf_counter() - t0
        frames, size = frames + len(batch), batch[0].shape[:2]
        if max_frames is not None and frames >= max_frames:
            break
    if frames == 0:
        raise DataError(f"{path}: video has no frames")
    total = time.perf_counter() - start
    return {"frames": frames, "height": int(size[0]), "width": int(size[1]),
            "predict_s": round(predict_s, 4), "decode_s": round(total - predict_s, 4),
            "frames_per_s": round(frames / max(predict_s, 1e-9), 3),
            "end_to_end_frames_per_s": round(frames / max(total, 1e-9), 3)}
