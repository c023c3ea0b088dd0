"""Output folders that pixelwise shares with the user's own files.

``predict -o d`` may point at a folder that holds images, ground truth or anything else, so
pixelwise replaces only files it wrote itself. It keeps a record of them in the folder:
``.pixelwise-outputs/``, one JSON-lines file per process (processes of a ``torchrun`` job or
of a scheduler's array append only to their own file, so none of them races another, even
on a network file system). Each line is ``{"t": ns, "name": FILE, "input": PATH | null}``:
a line without ``input`` claims ``FILE`` before it is written; a line with ``input`` says
that ``FILE`` was completed from that (resolved) input. The newest line of a name tells
whether a file there is whole and from which input (``--skip-existing``).

A file in the folder that pixelwise did not write is never replaced unless the user says
``--overwrite``.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Collection, Iterable

from ..errors import PixelwiseError

RECORD_DIR = ".pixelwise-outputs"


def check_output_folder(folder: str | os.PathLike, option: str) -> Path:
    """Fail now, before any work, when ``folder`` cannot be made or written: its nearest
    existing ancestor must be a writable folder (not a file, not read-only). Nothing is
    created here.

    Raises:
        PixelwiseError: one line naming ``option`` and the folder.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise PixelwiseError(f"{option} {folder}: cannot create the output folder ({existing} "
                             f"is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PixelwiseError(f"{option} {folder}: cannot create or write the output folder "
                             f"({existing} is not writable)")
    return folder


def check_output_file(path: str | os.PathLike, option: str,
                      inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """An output file that is none of ``inputs`` and whose folder can be written.

    Raises:
        PixelwiseError: ``path`` is one of the inputs (it would be destroyed), or its folder
            cannot be made or written.
    """
    path = Path(path)
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise PixelwiseError(f"{option} {path}: this is the input {given}; writing it would "
                                 f"destroy it, choose another output file")
    if path.is_dir():
        raise PixelwiseError(f"{option} {path}: is a folder, expected a file")
    check_output_folder(path.parent, option)
    return path


def read_records(folder: str | os.PathLike) -> dict[str, str | None]:
    """Every file pixelwise wrote (or began to write) in ``folder`` -> the input it was
    completed from (None: claimed, not known to be complete)."""
    lines = []
    for record in sorted((Path(folder) / RECORD_DIR).glob("*.jsonl")):
        for text in record.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(text)
                lines.append((int(line["t"]), str(line["name"]), line.get("input")))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill: the file it named is claimed again
    return {name: source for _, name, source in sorted(lines, key=lambda x: x[0])}


def refuse_foreign(folder: str | os.PathLike, names: Collection[str],
                   records: dict[str, str | None], overwrite: bool, option: str = "-o",
                   overwrite_flag: str | None = "--overwrite") -> None:
    """Refuse to replace files in ``folder`` that pixelwise did not write (the message
    offers ``overwrite_flag`` when the command has one).

    Raises:
        PixelwiseError: some of ``names`` exist there and are not in ``records`` (the first
            few are named), unless ``overwrite``.
    """
    if overwrite:
        return
    folder = Path(folder)
    foreign = sorted(n for n in names if n not in records and os.path.lexists(folder / n))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        remedy = f", or pass {overwrite_flag} to replace them" if overwrite_flag else ""
        raise PixelwiseError(f"{option} {folder}: would replace {len(foreign)} file(s) that "
                             f"pixelwise did not write ({shown}); nothing was written. Choose "
                             f"another output folder{remedy}")


class Recorder:
    """Appends this process's lines to its own record file in ``folder``."""

    def __init__(self, folder: str | os.PathLike):
        record_dir = Path(folder) / RECORD_DIR
        record_dir.mkdir(parents=True, exist_ok=True)
        self.path = record_dir / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.jsonl"

    def claim(self, names: Iterable[str]) -> None:
        """Before writing ``names``: they are pixelwise's from now on."""
        self._append([{"t": time.time_ns(), "name": n} for n in names])

    def completed(self, names: Iterable[str], source: str | os.PathLike) -> None:
        """``names`` are whole, predicted from ``source``."""
        resolved = str(Path(source).resolve())
        self._append([{"t": time.time_ns(), "name": n, "input": resolved} for n in names])

    def _append(self, lines: list[dict]) -> None:
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
