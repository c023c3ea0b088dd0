"""Loading pretrained backbone weights from a local file or a URL (torch.hub cache + hash check)."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch

from ..errors import PixelwiseError

# torchvision's ImageNet weights; file names carry the sha256 prefix that torch.hub checks.
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
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
