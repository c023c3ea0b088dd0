"""Atomic file writes, and the PNG encodings of masks and images that every writer shares.

Atomic: write to a temporary file beside the target, fsync, then rename. A run killed midway
leaves either the old file or the new one, never a torn one, plus at worst its temporary
(``.NAME.XXXXXXXX.tmp``), which :func:`remove_stale_temporaries` clears.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Iterator, Sequence

import numpy as np
import torch

from ..errors import PixelwiseError

# tempfile.mkstemp names: ".NAME." + 8 characters of [a-z0-9_] + ".tmp" (atomic_write), or
# ".STEM." + 8 + ".tmp.SUFFIX" (atomic_path: writers that pick the format by suffix, video).
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?")


def _target(found: re.Match) -> str:
    """The file name a temporary was to become."""
    return found.group(1) + (found.group(2) or "")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file, then atomically move it to ``path``.

    Raises:
        PixelwiseError: the disk is full or the folder is not writable (an OSError); the
            message names ``path``, and the previous file at ``path``, if any, is kept.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        error = _os_error(e)
        if error is None:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise PixelwiseError(f"{path}: cannot write ({error.strerror or error}); {kept}") from e
    return path


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: mkstemp's 0600 ignores the umask, and outputs
    on a shared folder must be readable as the user's other files are."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


def read_text(path: str | os.PathLike, error: type[PixelwiseError] = PixelwiseError) -> str:
    """A UTF-8 text file's contents.

    Raises:
        ``error``: not UTF-8 (the byte is named), or unreadable; the message names ``path``.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None


def _os_error(error: BaseException) -> OSError | None:
    # torch.save reports a failed write of its zip writer as a RuntimeError caused by it.
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def remove_stale_temporaries(folder: str | os.PathLike,
                             targets: Collection[str] | None = None) -> list[Path]:
    """Delete the temporaries that :func:`atomic_write` / :func:`atomic_path` left in ``folder``
    when killed.

    Only pixelwise's own names (``.NAME.XXXXXXXX.tmp``, ``.STEM.XXXXXXXX.tmp.SUFFIX``)
    directly in ``folder`` are touched, and with ``targets`` only those of these file names
    (a process that shares the folder with others clears the temporaries of its own outputs).
    Call it when no write of those files is in progress: at the start of a run.

    Returns:
        The removed paths (none when ``folder`` does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        found = _TEMPORARY.fullmatch(entry.name)
        if found is None or (targets is not None and _target(found) not in targets):
            continue
        if entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) for a writer that wants a file name;
    moved to ``path`` when the block ends, removed if it raises. Nest several (an
    ``ExitStack``) to publish a set of files only when all of them are complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.fchmod(fd, _file_mode())
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The largest class count a palette PNG holds; masks of more classes are written 16-bit.
PALETTE_CLASSES = 256
PNG_COMPRESS_LEVEL = 6


def encode_mask_png(mask: np.ndarray, palette: Sequence[Sequence[int]],
                    class_names: Sequence[str]) -> bytes:
    """``(H, W)`` class indices -> PNG bytes whose pixel values are the class indices.

    Up to 256 classes the PNG is a palette ("P") image, each value shown in its class's
    colour; more classes do not fit a palette, and the mask is a 16-bit greyscale PNG (what
    image tools read as class indices up to 65535). The class names go into a
    ``pixelwise:class_names`` text chunk, so a mask file says what its values mean.

    Raises:
        ValueError: not a 2-D mask, or values outside 0..65535.
    """
    from PIL import Image, PngImagePlugin

    from ..report.visualize import palette_image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    low, high = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"mask values {low}..{high} do not fit a PNG (0..65535)")
    info = PngImagePlugin.PngInfo()
    info.add_text("pixelwise:class_names", json.dumps(list(class_names)))
    if len(class_names) > PALETTE_CLASSES or high >= PALETTE_CLASSES:
        img = Image.fromarray(mask.astype(np.uint16))
    else:
        img = palette_image(mask, list(palette))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (overlays)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
