"""Which torch device to run on, shared by training and inference: ``train.device``,
``Predictor(device=...)`` and the CLI's ``--device`` are read by the same two functions."""
from __future__ import annotations

import torch


def device_problem(name: str | torch.device, local_rank: int = 0) -> str | None:
    """Why the torch device ``name`` cannot be used on this machine, or None when it can.

    ``"auto"`` always works; ``"cuda"`` means ``cuda:<local_rank>`` (torchrun's process).
    """
    if str(name) == "auto":
        return None
    try:
        dev = torch.device(f"cuda:{local_rank}" if str(name) == "cuda" else name)
    except (RuntimeError, TypeError, ValueError):
        return f"{str(name)!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (f"{str(name)!r} asked for, but CUDA is not available here (no GPU, or "
                    f"PyTorch built without CUDA); use cpu or auto")
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            return f"{dev} asked for, but this machine has {count} CUDA device(s)"
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        return f"{str(name)!r} asked for, but Apple MPS is not available here; use cpu or auto"
    elif dev.type not in ("cpu", "cuda", "mps"):
        return f"{str(name)!r}: device type {dev.type!r} is not supported; use cpu, cuda or mps"
    return None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; others as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)
