"""Input checks shared by the models."""
from __future__ import annotations

import torch
import torch.fx


# A leaf for torch.fx: traced models (BatchNorm folding) keep the check as one call instead
# of failing on a size comparison. Call it as ``_checks.check_min_size`` so the lookup sees
# fx's patch of this module's globals.
@torch.fx.wrap
def check_min_size(x: torch.Tensor, minimum: int, model: str) -> None:
    """Raise ValueError when a side of ``x`` is under ``minimum`` pixels.

    Poolings floor, so a side under ``2**poolings`` reaches the bottom as 0 pixels: say so
    (a ValueError, the server's 422) rather than fail inside max_pool2d (a RuntimeError).
    """
    if x.shape[-2] < minimum or x.shape[-1] < minimum:
        raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is too small for {model}: each "
                         f"side needs at least {minimum} pixels")
