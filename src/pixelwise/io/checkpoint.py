"""Self-describing checkpoints.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {
      "format": "pixelwise-checkpoint", "version": 1,
      "model": {"name": "unet", "kwargs": {...}},
      "class_names": [...], "palette": [[r, g, b], ...] | None,
      "normalization": {"mean": [...], "std": [...]},   # on images scaled to [0, 1]
      "ignore_index": 255,
      "config": {...} | None,                           # the resolved run config
      "state_dict": {...},
      "training": {...} | None,                         # optimizer, scheduler, RNG... (trainer)
      "postprocess": {...} | None,   # chosen on validation (inference/postprocess.py); absent
    }                                # in checkpoints older than it, read as None

``load_checkpoint(path)`` rebuilds the model from this alone.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .files import atomic_torch_save
from ..data.labels import LabelSet
from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..inference.postprocess import check_postprocessing
from ..models.probe import meta_forward, meta_model, min_input_size
from ..models.registry import build_model

FORMAT = "pixelwise-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with everything needed to use it."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    palette: list[tuple[int, int, int]] | None = None
    ignore_index: int = 255
    config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    path: Path | None = None
    postprocess: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    @property
    def labels(self) -> LabelSet:
        """Name and colour of each mask value (a one-logit model's 0 is the background)."""
        return LabelSet.from_names(self.class_names, self.palette, num_outputs=self.num_outputs)

    @property
    def num_outputs(self) -> int:
        """Channels of the model's logits: ``num_classes`` from the constructor when given
        (1 for a binary model on two class names)."""
        return int(self.model_kwargs.get("num_classes", self.num_classes))

    def metadata(self) -> dict[str, Any]:
        """What inference needs besides the weights, as plain JSON-able values: exports carry
        it (:func:`metadata_to_strings`) and inference backends read it back."""
        return {
            "format_version": METADATA_VERSION,
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "class_names": list(self.class_names),
            "num_outputs": self.num_outputs,
            "mean": list(self.mean),
            "std": list(self.std),
            "palette": [list(c) for c in self.palette] if self.palette is not None else None,
            "ignore_index": self.ignore_index,
        }


# Exported models store the metadata as string key/value pairs (ONNX ``metadata_props``;
# TorchScript's extra file holds the same dict as one JSON file), every value JSON-encoded.
METADATA_PREFIX = "pixelwise."
METADATA_VERSION = 1
METADATA_REQUIRED = ("model_name", "class_names", "mean", "std")


def metadata_to_strings(meta: dict[str, Any]) -> dict[str, str]:
    """``{"pixelwise.<key>": json}`` for each entry of :meth:`Checkpoint.metadata`."""
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def metadata_from_strings(props: dict[str, str], source: str) -> dict[str, Any]:
    """Inverse of :func:`metadata_to_strings`; other keys are ignored.

    Raises:
        CheckpointError: a required key is missing or a value is not JSON (``source`` named).
    """
    meta = {k[len(METADATA_PREFIX):]: v for k, v in props.items()
            if k.startswith(METADATA_PREFIX)}
    missing = [k for k in METADATA_REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: not a pixelwise export (metadata lacks "
                              f"{', '.join(METADATA_PREFIX + m for m in sorted(missing))})")
    try:
        return {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: unreadable pixelwise metadata: {e}") from e


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict[str, Any],
                    class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...],
                    palette: list[tuple[int, int, int]] | None = None, ignore_index: int = 255,
                    config: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None,
                    postprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the checkpoint dict (see module docstring)."""
    if len(mean) != len(std):
        raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
    # Unwrap DDP / torch.compile so keys never carry "module." or "_orig_mod." prefixes.
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {
        "format": FORMAT,
        "version": VERSION,
        # The weights are in state_dict: never re-download a pretrained backbone on load.
        "model": {"name": model_name,
                  "kwargs": {k: v for k, v in model_kwargs.items() if k != "pretrained"}},
        "class_names": list(class_names),
        "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "ignore_index": int(ignore_index),
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": training,
        "postprocess": postprocess,
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str,
                    model_kwargs: dict[str, Any], class_names: list[str],
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                    **extra: Any) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, fsync, rename).

    ``extra`` takes the optional fields of :func:`make_checkpoint` (palette, ignore_index,
    config, training, postprocess).
    """
    ckpt = make_checkpoint(model, model_name, model_kwargs, class_names, mean, std, **extra)
    return atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate the raw checkpoint dict with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: {_load_failure(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pixelwise checkpoint (no 'format': '{FORMAT}')")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this "
                              f"pixelwise understands ({VERSION}); upgrade pixelwise")
    _check_fields(ckpt, path)
    return ckpt


def _load_failure(error: Exception) -> str:
    """What a file refused by ``torch.load(weights_only=True)`` is not, in one line.

    PyTorch's own message advises retrying with ``weights_only=False``: for a file from an
    unknown source that would run its code, so that advice is never passed on.
    """
    text = str(error)
    # torch 2.6-2.13 words a refused import "Unsupported global: GLOBAL os.system was not an
    # allowed global" or "Trying to load unsupported GLOBAL posix.system whose module posix
    # is blocked", and a refused call "Trying to call reduce for unrecognized function ...".
    found = (re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([A-Za-z_][\w.]*)", text, re.I)
             or re.search(r"unrecognized function\s+(<[^>]*>|\S+)", text, re.I))
    if found:
        return (f"not a pixelwise checkpoint: it holds a Python object ({found.group(1)}) "
                f"that no checkpoint contains; the unsupported global was refused unread "
                f"(no code ran)")
    if isinstance(error, EOFError) or "Ran out of input" in text:
        return "not a readable checkpoint (the file is empty or ends too early)"
    if "Weights only load failed" in text:
        return "not a readable checkpoint (not a PyTorch file, or a damaged one)"
    if "central directory" in text or "zip archive" in text:
        return "not a readable checkpoint (a damaged or truncated file: its archive is incomplete)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    sentence = re.split(r"(?<=\.)\s", first, maxsplit=1)[0]  # whole sentences only
    return f"not a readable checkpoint ({type(error).__name__}: {sentence[:300]})"


def _check_fields(ckpt: dict, path: Path) -> None:
    """The checkpoint's fields have the types the module docstring gives."""
    model, norm = ckpt.get("model"), ckpt.get("normalization")
    names, palette = ckpt.get("class_names"), ckpt.get("palette")
    problems = [
        (isinstance(model, dict) and isinstance(model.get("name"), str)
         and isinstance(model.get("kwargs"), dict), "'model' must give a name and kwargs"),
        (isinstance(names, list) and names and all(isinstance(n, str) for n in names),
         "'class_names' must be a non-empty list of names"),
        (isinstance(norm, dict) and _numbers(norm.get("mean")) and _numbers(norm.get("std"))
         and len(norm["mean"]) == len(norm["std"]) and all(v > 0 for v in norm["std"]),
         "'normalization' must give mean and std of one length, std > 0"),
        (isinstance(ckpt.get("state_dict"), dict), "'state_dict' must be a mapping"),
        (palette is None or (isinstance(palette, list) and all(
            isinstance(c, (list, tuple)) and len(c) == 3 and _numbers(c) for c in palette)),
         "'palette' must be a list of [r, g, b]"),
        (isinstance(ckpt.get("ignore_index", 255), int), "'ignore_index' must be an integer"),
    ]
    for ok, message in problems:
        if not ok:
            raise CheckpointError(f"{path}: malformed checkpoint: {message}")
    if ckpt.get("postprocess") is not None:
        try:
            check_postprocessing(ckpt["postprocess"], len(names))
        except ValueError as e:
            raise CheckpointError(f"{path}: malformed checkpoint: {e}") from None


def set_postprocess(path: str | os.PathLike, spec: dict[str, Any] | None) -> Path:
    """Store a post-processing spec (and its report) in an existing checkpoint, atomically.

    Raises:
        CheckpointError: the checkpoint is unreadable or the spec malformed.
    """
    ckpt = read_checkpoint(path)
    ckpt["postprocess"] = spec
    _check_fields(ckpt, Path(path))
    return atomic_torch_save(ckpt, path)


def _numbers(values: object) -> bool:
    return isinstance(values, (list, tuple)) and bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)


def state_dict_mismatch(model: nn.Module, state: dict) -> str | None:
    """A few words on how ``state`` differs from ``model``'s own keys and shapes (counts and
    the first keys of each kind), or None when it matches."""
    own = model.state_dict()
    kinds = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "with another shape": [k for k in own if k in state
                               and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)],
    }
    parts = [f"{len(keys)} key(s) {kind} ({', '.join(map(str, keys[:3]))}"
             f"{', ...' if len(keys) > 3 else ''})" for kind, keys in kinds.items() if keys]
    return "; ".join(parts) or None


def check_against_model(ckpt: dict, path: Path) -> None:
    """The metadata agrees with the architecture: channels, and one name per output.

    The model is rebuilt on the meta device, so this costs shapes only. A one-output (sigmoid)
    model takes one or two class names (background, foreground).
    """
    name, kwargs = ckpt["model"]["name"], ckpt["model"]["kwargs"]
    channels, names = len(ckpt["normalization"]["mean"]), ckpt["class_names"]
    try:
        net = meta_model(name, kwargs)
        size = min_input_size(net, channels)
        outputs = meta_forward(net, channels, size, size)[1]
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: model {name!r} does not take the {channels}-channel "
                              f"images its normalization describes ({str(e)[:200]})") from None
    try:
        LabelSet.from_names(names, ckpt.get("palette"), num_outputs=outputs)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; the metadata contradicts the weights") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model described by a checkpoint and load its weights strictly.

    Returns:
        A :class:`Checkpoint` whose ``model`` is in eval mode on ``map_location``.
    """
    ckpt = read_checkpoint(path, map_location)
    name, kwargs = ckpt["model"]["name"], ckpt["model"]["kwargs"]
    check_against_model(ckpt, Path(path))
    try:
        model = build_model(name, **kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r}: {e}") from None
    mismatch = state_dict_mismatch(model, ckpt["state_dict"])
    if mismatch is not None:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {mismatch}")
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot load the weights into {name!r}: "
                              f"{str(e)[:300]}") from None
    model.to(map_location).eval()
    palette = ckpt.get("palette")
    return Checkpoint(
        model=model, model_name=name, model_kwargs=kwargs,
        class_names=list(ckpt["class_names"]),
        mean=tuple(ckpt["normalization"]["mean"]), std=tuple(ckpt["normalization"]["std"]),
        palette=[tuple(c) for c in palette] if palette is not None else None,
        ignore_index=ckpt.get("ignore_index", 255), config=ckpt.get("config"),
        training=ckpt.get("training"), path=Path(path), postprocess=ckpt.get("postprocess"),
    )
