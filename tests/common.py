"""Constants shared by the test modules."""
import os
from pathlib import Path

import pytest
import torch

# ../shared/data beside the repository (CI clones the repo with shared/ next to it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The data sets it holds (its README.md); other presets' data is not expected there.
SHARED_DATASETS = ("camvid", "drive", "isbi2012")
# Set to 1 where ../shared/data is absent on purpose: its tests then skip instead of failing.
NO_SHARED_DATA = "PIXELWISE_NO_SHARED_DATA"


def absent_on_purpose(name: str) -> bool:
    """``../shared/data/<name>`` is missing and ``PIXELWISE_NO_SHARED_DATA=1`` says so."""
    return not (SHARED_DATA / name).is_dir() and os.environ.get(NO_SHARED_DATA) == "1"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>`` for a test that reads it.

    A data set ../shared/data holds must be there: when it is missing the test fails (CI has
    it), unless ``PIXELWISE_NO_SHARED_DATA=1`` says it is absent on purpose, when it skips.
    Data sets ../shared/data does not hold (``voc2012``) skip.
    """
    root = SHARED_DATA / name
    if root.is_dir():
        return root
    if name not in SHARED_DATASETS:
        pytest.skip(f"{name} is not one of the data sets in ../shared/data")
    if absent_on_purpose(name):
        pytest.skip(f"{root} absent ({NO_SHARED_DATA}=1)")
    pytest.fail(f"{root} is missing: the tests read ../shared/data beside the repository; "
                f"set {NO_SHARED_DATA}=1 to skip these tests where it is absent on purpose",
                pytrace=False)

# Smallest constructor arguments per registered model, so tests over the zoo stay fast.
TINY = {
    "unet": dict(in_channels=3, num_classes=3, base_channels=4, depth=3),
    "unet_small": dict(in_channels=1, num_classes=1),
    "resnet34_unet": dict(in_channels=3, num_classes=3),
    "fcn32s": dict(num_classes=3),
    "fcn16s": dict(num_classes=3),
    "fcn8s": dict(num_classes=3),
    # the U-Net zoo; UNet++ with deep supervision, so the list-in-training path is covered
    "unet_plus_plus": dict(in_channels=3, num_classes=3, base_channels=4, depth=3,
                           deep_supervision=True, inference="mean"),
    "attention_unet": dict(in_channels=3, num_classes=1, base_channels=4, depth=3),
    "r2unet": dict(in_channels=1, num_classes=3, base_channels=4, depth=3, t=2),
    "r2attention_unet": dict(in_channels=3, num_classes=3, base_channels=4, depth=3, t=2),
    "ce_net": dict(in_channels=3, num_classes=1),
    "segnet": dict(in_channels=3, num_classes=3),
    "vgg16_unet": dict(in_channels=3, num_classes=3, decoder_channels=[8, 8, 8, 8]),
    "resnet50_unet": dict(in_channels=3, num_classes=3, decoder_channels=[8, 8, 8, 8, 8]),
    "resnet34_unet_concat": dict(in_channels=3, num_classes=3, decoder_channels=[8, 8, 8, 8, 8]),
    # the pretrained-encoder U-Nets (from scratch here; the ImageNet weights: test_efficientnet)
    "efficientnet_lite0_unet": dict(in_channels=3, num_classes=3, decoder_channels=[8] * 5),
    "efficientnet_lite1_unet": dict(in_channels=1, num_classes=2, decoder_channels=[8] * 5),
    "efficientnet_lite2_unet": dict(in_channels=3, num_classes=1, decoder_channels=[8] * 5),
}


# torchvision state_dict layouts, written out independently of pixelwise's backbones (keys
# and shapes as torchvision's vgg16 / vgg16_bn / resnet34 / resnet50), with random values.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
             "M"]


def _bn(sd, prefix, c):
    sd.update({f"{prefix}.weight": torch.rand(c), f"{prefix}.bias": torch.randn(c),
               f"{prefix}.running_mean": torch.randn(c), f"{prefix}.running_var": torch.rand(c),
               f"{prefix}.num_batches_tracked": torch.tensor(7)})


def torchvision_vgg16_layout(batch_norm=False):
    sd, idx, c_in = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, c_in, 3, 3)
        sd[f"features.{idx}.bias"] = torch.randn(v)
        if batch_norm:
            _bn(sd, f"features.{idx + 1}", v)
        idx, c_in = idx + (3 if batch_norm else 2), v
    for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        sd[f"classifier.{i}.weight"] = torch.randn(o, n) * 0.01
        sd[f"classifier.{i}.bias"] = torch.randn(o)
    return sd


def torchvision_resnet_layout(depth=34):
    sd = {"conv1.weight": torch.randn(64, 3, 7, 7)}
    _bn(sd, "bn1", 64)
    expansion = 1 if depth == 34 else 4
    c_in = 64
    for layer, (c, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        out = c * expansion
        for b in range(n):
            p, first_in = f"layer{layer}.{b}", c_in if b == 0 else out
            if depth == 34:
                convs = [(c, first_in, 3), (c, c, 3)]
            else:
                convs = [(c, first_in, 1), (c, c, 3), (out, c, 1)]
            for k, (o, i, ks) in enumerate(convs, start=1):
                sd[f"{p}.conv{k}.weight"] = torch.randn(o, i, ks, ks)
                _bn(sd, f"{p}.bn{k}", o)
            if b == 0 and (first_in != out or layer > 1):
                sd[f"{p}.downsample.0.weight"] = torch.randn(out, first_in, 1, 1)
                _bn(sd, f"{p}.downsample.1", out)
        c_in = out
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512 * expansion), torch.randn(1000)
    return sd


def torchvision_resnet34_layout():
    return torchvision_resnet_layout(34)


def default_conv_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """PyTorch's default (narrow) conv init instead of the model's He init, drawn from
    ``seed`` in construction order: the random net (weights and the RNG state after it) that
    the tiling and prediction figures were measured on, whose outputs change smoothly."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.reset_parameters()
    return model


def listed(folder) -> list[str]:
    """The files of an output folder, without pixelwise's record of what it wrote there."""
    from pixelwise.io.outputs import RECORD_DIR

    return sorted(p.name for p in Path(folder).iterdir() if p.name != RECORD_DIR)
