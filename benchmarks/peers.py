"""smp (segmentation_models.pytorch) as a peer in the benchmarks.

Which smp network is the same network as which pixelwise model, and where the peers venv is.
smp and timm do not import with pixelwise's CPU torch wheel, so the smp side always runs in
its own process under the peers venv's python (built by ``../shared/peers/setup.sh``). This
module imports only the standard library, so both pythons can import it.
"""
from __future__ import annotations

import os

# pixelwise model -> the smp Unet encoder of the same network (smp's default decoder widths
# 256-16 are pixelwise's EncoderUNet's).
SMP_UNETS = {"efficientnet_lite0_unet": "tu-tf_efficientnet_lite0"}
DEFAULT_PEERS_PYTHON = "/tmp/pixelwise-peers-venv/bin/python"


def find_peers_python(path: str | None) -> str | None:
    """The peers venv's python: ``path``, else $PIXELWISE_PEERS_PYTHON, else the default
    location. None, after a one-line note, when that file is not there: smp is skipped."""
    path = path or os.environ.get("PIXELWISE_PEERS_PYTHON") or DEFAULT_PEERS_PYTHON
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    print(f"note: no peers venv python at {path} (bash ../shared/peers/setup.sh builds it): "
          f"smp peer skipped", flush=True)
    return None


def smp_unet(name: str, num_classes: int):
    """smp's Unet of pixelwise model ``name`` with random weights (under the peers python)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(SMP_UNETS[name], encoder_weights=None, in_channels=3, classes=num_classes)
