"""Loading pretrained backbone weights from a local file or a URL (torch.hub cache + hash check)."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import PixelwiseError

# torchvision's ImageNet weights; file names carry the sha256 prefix that torch.hub checks.
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def load_state_dict(source: str | os.PathLike, model_dir: str | None = None,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Load a state_dict from a local path or an http(s) URL, always with ``weights_only=True``.

    URLs go through ``torch.hub.load_state_dict_from_url`` (cached under ``$TORCH_HOME/hub``
    or ``model_dir``); when the file name has the form ``name-<sha256 prefix>.ext`` the
    download is verified against that prefix. Being offline, a bad hash or a missing file
    raise :class:`PixelwiseError` with what to do instead.
    """
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(
                source, model_dir=model_dir, map_location="cpu", progress=progress,
                check_hash=True, weights_only=True)
        except urllib.error.URLError as e:
            raise PixelwiseError(
                f"cannot download {source} ({e.reason}); if this machine is offline, download "
                f"the file elsewhere and pass its local path instead") from e
        except RuntimeError as e:
            if "invalid hash value" in str(e):
                raise PixelwiseError(f"{source}: downloaded file fails its sha256 check: {e}") from e
            raise
    else:
        path = Path(source)
        if not path.is_file():
            raise PixelwiseError(f"{path}: pretrained weights file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Some checkpoints wrap the weights: {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def resolve_pretrained(pretrained: bool | str | os.PathLike | None, backbone: str) -> str | None:
    """``True`` -> torchvision's URL for ``backbone``; a path/URL as is; ``None``/``False`` -> None."""
    if pretrained is True:
        return TORCHVISION_URLS[backbone]
    if not pretrained:
        return None
    return str(pretrained)


def load_pretrained(module: nn.Module, pretrained: bool | str | os.PathLike | None,
                    backbone: str,
                    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    """Load ``pretrained`` (see :func:`resolve_pretrained`) into ``module`` strictly, after
    ``convert`` (a checking ``state_dict -> state_dict`` function); nothing for None/False."""
    source = resolve_pretrained(pretrained, backbone)
    if source is not None:
        module.load_state_dict(convert(load_state_dict(source)), strict=True)


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv filters ``(O, 3, k, k)`` adapted to ``in_channels`` inputs.

    One channel gets the RGB filters summed (a grey image then gives the same response as
    the RGB image with that grey in every channel); more channels get them repeated and
    rescaled so the expected activation stays the same.
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     name: str) -> None:
    """Raise ValueError naming the missing, unexpected or mis-shaped keys of ``state``.

    ``expected`` is the target module's own ``state_dict()``; ``name`` (``"ResNet50"``) goes
    into the message so the user knows which checkpoint was wrong.
    """
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"
        raise ValueError(f"{name} state_dict does not match: missing keys {few(missing)}, "
                         f"unexpected keys {few(unexpected)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{name} key {key!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)}")
