"""Constants shared by the test modules."""
from pathlib import Path

# ../shared/data beside the repository (CI clones the repo with shared/ next to it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Smallest constructor arguments per registered model, so tests over the zoo stay fast.
TINY = {
    "unet": dict(in_channels=3, num_classes=3, base_channels=4, depth=3),
    "unet_small": dict(in_channels=1, num_classes=1),
    "resnet34_unet": dict(in_channels=3, num_classes=3),
    "fcn32s": dict(num_classes=3),
    "fcn16s": dict(num_classes=3),
    "fcn8s": dict(num_classes=3),
}
