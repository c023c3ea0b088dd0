"""What ``-c`` names in ``pixelwise predict|evaluate|serve``: checkpoints, ONNX files and fold
run folders, turned into the members of an ensemble and the post-processing to apply.

- ``-c best.pt`` (or ``model.onnx``): one member; its checkpoint's ``postprocess`` spec.
- ``-c RUNDIR``, a folder of folds (``pixelwise train --folds K``): the members listed in
  ``RUNDIR/crossval.json`` (``"members"``, relative to RUNDIR) and its ``"postprocess"``,
  chosen on the out-of-fold predictions. Without ``crossval.json`` (folds still training,
  or trained apart with ``--fold``): every ``RUNDIR/foldN/checkpoints/best.pt``, in the
  order of N, and the post-processing of an explicit list (below).
- Several ``-c`` (files and folders): all their members; the post-processing is the one that
  every member's checkpoint carries when they all carry the same operations, else none (an ONNX file
  carries none), and :attr:`Ensemble.note` says which.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError

CROSSVAL = "crossval.json"
FOLD_DIR = re.compile(r"fold(\d+)$")


@dataclass(frozen=True)
class Ensemble:
    """The members named by ``-c`` and the post-processing chosen for them.

    Attributes:
        members: checkpoint (``.pt``) or ``.onnx`` paths, in order.
        postprocess: the spec to apply (None: none).
        note: one line saying where ``postprocess`` comes from, or why there is none.
    """

    members: list[Path]
    postprocess: dict[str, Any] | None
    note: str


def resolve_checkpoints(given: Sequence[str | os.PathLike]) -> Ensemble:
    """The members and post-processing of the ``-c`` arguments (see the module docstring).

    Raises:
        CheckpointError: a folder without folds, a member that is not there, an unreadable
            ``crossval.json`` (each named).
    """
    if not given:
        raise CheckpointError("no checkpoint given")
    if len(given) == 1 and Path(given[0]).is_dir() and (Path(given[0]) / CROSSVAL).is_file():
        folder = Path(given[0])
        members, spec = _crossval(folder)
        where = folder / CROSSVAL
        return Ensemble(members, spec, f"post-processing from {where}" if spec
                        else f"no post-processing in {where}")
    members = [m for g in given for m in _members_of(Path(g))]
    if len(members) == 1:
        spec = stored_postprocess(members[0])
        return Ensemble(members, spec, f"post-processing from {members[0]}" if spec
                        else f"no post-processing in {members[0]}")
    specs = [stored_postprocess(m) for m in members]
    # the operations decide; the report of how each was chosen may differ
    if all((s or {}).get("classes") == (specs[0] or {}).get("classes") for s in specs):
        return Ensemble(members, specs[0],
                        f"post-processing common to the {len(members)} members" if specs[0]
                        else f"no post-processing in the {len(members)} members")
    return Ensemble(members, None, f"no post-processing: the {len(members)} members do not all "
                                   f"carry the same")


def _members_of(path: Path) -> list[Path]:
    """A file as it is; a folder's members (``crossval.json``'s, else its folds' best.pt)."""
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return [path]
    if (path / CROSSVAL).is_file():
        return _crossval(path)[0]
    folds = sorted((int(m.group(1)), d) for d in path.iterdir()
                   if d.is_dir() and (m := FOLD_DIR.match(d.name)))
    members = [d / "checkpoints" / "best.pt" for _, d in folds]
    if not members:
        raise CheckpointError(f"{path}: a folder given as a checkpoint must hold {CROSSVAL} or "
                              f"fold0/checkpoints/best.pt, fold1/... (pixelwise train --folds)")
    return [_existing(m) for m in members]


def _crossval(folder: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """``crossval.json``'s members (as paths) and post-processing spec."""
    path = folder / CROSSVAL
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    members = result.get("members") if isinstance(result, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str)
                                                               for m in members):
        raise CheckpointError(f"{path}: 'members' must list the folds' checkpoints")
    spec = result.get("postprocess")
    return [_existing(folder / m) for m in members], spec if spec else None


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{path}: ensemble member not found")
    return path


def stored_postprocess(path: Path) -> dict[str, Any] | None:
    """The post-processing spec a checkpoint carries (None for an ONNX file: exports do not
    carry it)."""
    if path.suffix.lower() == ".onnx":
        return None
    from ..io.checkpoint import read_checkpoint

    return read_checkpoint(path).get("postprocess") or None
