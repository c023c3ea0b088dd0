"""What an exported model carries besides its graph: enough to pre- and post-process images.

Stored as string key/value pairs (ONNX ``metadata_props``; TorchScript ``_extra_files`` holds
the same dict as one JSON file), every value JSON-encoded, keys prefixed ``pixelwise.``.
"""
from __future__ import annotations

import json
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import CheckpointError

PREFIX = "pixelwise."
FORMAT_VERSION = 1


def num_outputs(ckpt: Checkpoint) -> int:
    """Channels of the model's logits: ``num_classes`` from the constructor when given."""
    return int(ckpt.model_kwargs.get("num_classes", ckpt.num_classes))


def checkpoint_metadata(ckpt: Checkpoint) -> dict[str, Any]:
    """The metadata dict of a checkpoint (plain JSON-able values)."""
    return {
        "format_version": FORMAT_VERSION,
        "model_name": ckpt.model_name,
        "model_kwargs": ckpt.model_kwargs,
        "class_names": list(ckpt.class_names),
        "num_outputs": num_outputs(ckpt),
        "mean": list(ckpt.mean),
        "std": list(ckpt.std),
        "palette": [list(c) for c in ckpt.palette] if ckpt.palette is not None else None,
        "ignore_index": ckpt.ignore_index,
    }


def to_string_map(meta: dict[str, Any]) -> dict[str, str]:
    return {PREFIX + k: json.dumps(v) for k, v in meta.items()}


def from_string_map(props: dict[str, str], source: str) -> dict[str, Any]:
    """Inverse of :func:`to_string_map`; ``source`` names the file in errors."""
    meta = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    missing = {"model_name", "class_names", "mean", "std"} - set(meta)
    if missing:
        raise CheckpointError(f"{source}: not a pixelwise export (metadata lacks "
                              f"{', '.join(PREFIX + m for m in sorted(missing))})")
    try:
        return {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: unreadable pixelwise metadata: {e}") from e
