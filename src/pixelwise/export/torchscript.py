"""TorchScript export: a self-contained ``.pt`` with the metadata as an extra file."""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..io.checkpoint import Checkpoint, load_checkpoint
from ..errors import CheckpointError
from ..io.files import atomic_write_bytes
from ..fast.fold import fold_batchnorm
from .parity import check_parity, example_input

METADATA_FILE = "pixelwise.json"


def _script_or_trace(model: torch.nn.Module, ckpt: Checkpoint) -> torch.jit.ScriptModule:
    # Scripting keeps shape arithmetic (odd sizes, skip crops) symbolic; tracing would bake in
    # the example's sizes, so it is the fallback, checked on a second size below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(model)
        except Exception:
            return torch.jit.trace(model, example_input(ckpt), check_trace=False)


def export_torchscript(checkpoint: str | os.PathLike | Checkpoint, path: str | os.PathLike,
                       fold_bn: bool = True) -> Path:
    """Export a checkpoint to TorchScript; metadata goes to the extra file ``pixelwise.json``.

    Args:
        checkpoint: checkpoint path or loaded :class:`~pixelwise.io.checkpoint.Checkpoint`.
        path: output file (written atomically).
        fold_bn: fold BatchNorm into convolutions first.

    Returns:
        ``path``; load it with :func:`load_torchscript` (or ``torch.jit.load`` with
        ``_extra_files={"pixelwise.json": ""}``).
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = fold_batchnorm(ckpt.model) if fold_bn else ckpt.model.eval()
    scripted = _script_or_trace(model, ckpt)
    # A fallback trace has the example's sizes baked in: the parity inputs differ from it.
    check_parity(f"TorchScript export of {ckpt.model_name!r}", ckpt, scripted)
    buffer = io.BytesIO()
    extra = {METADATA_FILE: json.dumps(ckpt.metadata())}
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users asked for it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue())


def load_torchscript(path: str | os.PathLike,
                     map_location: str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript export and its metadata dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: TorchScript file not found")
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError and friends for foreign files
        raise CheckpointError(f"{path}: not a TorchScript file ({e})") from e
    if not extra[METADATA_FILE]:
        raise CheckpointError(f"{path}: TorchScript file without {METADATA_FILE}")
    return module.eval(), json.loads(extra[METADATA_FILE])
