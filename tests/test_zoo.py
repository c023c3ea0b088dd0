"""The U-Net zoo: reference parameter counts, torchvision weights loading strictly, UNet++ deep
supervision (model and loss), the context blocks, and small-input errors."""
import pytest
import torch
import torch.nn.functional as F

import pixelwise
from pixelwise.losses import DeepSupervisionLoss, build_loss
from pixelwise.models.backbones import (ResNet50Encoder, VGG16Encoder,
                                        resnet_state_dict_for_encoder,
                                        vgg16_state_dict_for_encoder)
from pixelwise.models.ce_net import DACBlock, RMPBlock
from pixelwise.fast.layout import ChannelsLastMaxUnpool
from pixelwise.models.segnet import MaxUnpool

from common import TINY, torchvision_resnet_layout, torchvision_vgg16_layout


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The reference implementations' counts with 3 input channels and 1 output channel
# (README "The U-Net zoo" lists the same constructor arguments).
@pytest.mark.parametrize("name,kwargs,expected", [
    ("attention_unet", {}, 34_878_573),                                   # AttU_Net
    ("r2unet", {}, 39_091_393),                                           # R2U_Net
    ("r2attention_unet", {}, 39_442_925),                                 # R2AttU_Net
    ("unet_plus_plus", dict(deep_supervision=True), 9_163_428),           # UNET-ZOO, 4 heads
    ("unet_plus_plus", {}, 9_163_329),                                    # UNET-ZOO, 1 head
    ("unet_plus_plus", dict(base_channels=64), 36_629_633),               # Nest of UNets
    ("segnet", {}, 29_443_585),                                           # UNET-ZOO SegNet
    ("ce_net", {}, 29_003_093),                                           # CE-Net
])
def test_reference_parameter_counts(name, kwargs, expected):
    model = pixelwise.build_model(name, in_channels=3, num_classes=1, **kwargs)
    assert trainable(model) == expected


def test_encoder_unets_are_their_encoder_plus_a_decoder():
    vgg = pixelwise.build_model("vgg16_unet")
    assert trainable(vgg.encoder) == 14_714_688  # torchvision vgg16 features
    resnet = pixelwise.build_model("resnet50_unet")
    assert trainable(resnet.encoder) == 23_508_032  # torchvision resnet50 without fc
    assert resnet.encoder.stage_strides == (2, 4, 8, 16, 32)
    assert resnet.encoder.stage_channels == (64, 256, 512, 1024, 2048)
    with pytest.raises(ValueError, match="decoder_channels needs 5 entries"):
        pixelwise.build_model("resnet50_unet", decoder_channels=[8, 8])


@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchvision_vgg16_loads_strictly_into_the_encoder(batch_norm, tmp_path):
    tv = torchvision_vgg16_layout(batch_norm)
    encoder = VGG16Encoder(batch_norm=batch_norm)
    encoder.load_state_dict(vgg16_state_dict_for_encoder(tv, batch_norm=batch_norm), strict=True)
    last = "features.40" if batch_norm else "features.28"
    assert torch.equal(encoder.state_dict()[f"{last}.weight"], tv[f"{last}.weight"])
    # the other layout is refused, naming the keys
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        vgg16_state_dict_for_encoder(tv, batch_norm=not batch_norm)
    grey = vgg16_state_dict_for_encoder(tv, in_channels=1, batch_norm=batch_norm)
    torch.testing.assert_close(grey["features.0.weight"], tv["features.0.weight"].sum(1, True))

    torch.save(tv, tmp_path / "vgg.pth")
    names = ["segnet", "vgg16_unet"] if batch_norm else ["vgg16_unet"]
    for name in names:
        kwargs = dict(batch_norm=True) if name == "vgg16_unet" and batch_norm else {}
        model = pixelwise.build_model(name, pretrained=tmp_path / "vgg.pth", **kwargs)
        assert torch.equal(model.encoder.features[0].weight, tv["features.0.weight"])


def test_torchvision_resnet50_loads_strictly(tmp_path):
    tv = torchvision_resnet_layout(50)
    encoder = ResNet50Encoder()
    encoder.load_state_dict(resnet_state_dict_for_encoder(tv, depth=50), strict=True)
    assert torch.equal(encoder.layer4[2].bn3.running_var, tv["layer4.2.bn3.running_var"])
    torch.save(tv, tmp_path / "resnet50.pth")
    model = pixelwise.build_model("resnet50_unet", pretrained=tmp_path / "resnet50.pth")
    assert torch.equal(model.encoder.layer1[0].downsample[0].weight,
                       tv["layer1.0.downsample.0.weight"])
    tv["layer2.0.conv3.weight"] = torch.zeros(512, 128, 3, 3)
    with pytest.raises(ValueError, match=r"ResNet50 key 'layer2.0.conv3.weight' has shape"):
        resnet_state_dict_for_encoder(tv, depth=50)
    with pytest.raises(ValueError, match="ResNet34 state_dict does not match"):
        resnet_state_dict_for_encoder(torchvision_resnet_layout(50), depth=34)


def test_ce_net_takes_resnet34_weights(tmp_path):
    tv = torchvision_resnet_layout(34)
    torch.save(tv, tmp_path / "resnet34.pth")
    model = pixelwise.build_model("ce_net", pretrained=tmp_path / "resnet34.pth")
    assert torch.equal(model.encoder.layer3[5].conv2.weight, tv["layer3.5.conv2.weight"])


def test_segnet_unpools_with_the_encoders_indices():
    # The deepest decoder stage must see the encoder's last stage max-pooled and put back
    # at the maxima's positions (zeros elsewhere), at the pre-pool (odd) size.
    torch.manual_seed(0)
    model = pixelwise.build_model("segnet", in_channels=3, num_classes=3).eval()
    seen = []
    model.decoder[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 3, 75, 67)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 75, 67)
        deepest = model.encoder(x)[-1]  # stride 16: 4 x 4
        pooled, indices = F.max_pool2d(deepest, 2, 2, return_indices=True)
        want = F.max_unpool2d(pooled, indices, 2, 2, output_size=deepest.shape[-2:])
    assert deepest.shape[-2:] == (4, 4)
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)
    assert (seen[0] != 0).sum() <= pooled.numel()
    # the scatter form is torch's max_unpool2d, odd sizes included, in either layout
    x = torch.randn(2, 3, 9, 7)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    want = F.max_unpool2d(pooled, indices, 2, 2, output_size=(9, 7))
    for unpool in (MaxUnpool(), ChannelsLastMaxUnpool()):
        torch.testing.assert_close(unpool(pooled, indices, [9, 7]), want, rtol=0, atol=0)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    got = ChannelsLastMaxUnpool()(pooled, indices, [9, 7])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the layout carries on
    got.sum().backward()  # each maximum gets its gradient, once
    assert x.grad.sum() == pooled.numel() and set(x.grad.unique().tolist()) == {0.0, 1.0}


def unet_pp(**kwargs):
    torch.manual_seed(0)
    return pixelwise.build_model("unet_plus_plus", **{**TINY["unet_plus_plus"], **kwargs})


def test_unet_plus_plus_deep_supervision_train_list_eval_tensor():
    x = torch.randn(2, 3, 37, 45)
    model = unet_pp(inference="last").train()
    heads = model(x)
    assert isinstance(heads, list) and len(heads) == 3  # depth 3: X(0,1), X(0,2), X(0,3)
    assert all(h.shape == (2, 3, 37, 45) for h in heads)
    model.eval()
    with torch.no_grad():
        heads = model.head_outputs(x)
        last = model(x)
        model.inference = "mean"
        mean = model(x)
    assert isinstance(last, torch.Tensor) and isinstance(mean, torch.Tensor)
    torch.testing.assert_close(last, heads[-1])
    torch.testing.assert_close(mean, (heads[0] + heads[1] + heads[2]) / 3)
    assert not torch.allclose(mean, last)


def test_unet_plus_plus_without_deep_supervision_has_one_head():
    model = unet_pp(deep_supervision=False).train()
    out = model(torch.randn(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and len(model.heads) == 1
    with pytest.raises(ValueError, match="inference must be 'last' or 'mean'"):
        unet_pp(inference="best")


def test_deep_supervision_loss_averages_heads_and_passes_tensors():
    torch.manual_seed(0)
    ce = build_loss("ce")
    loss = DeepSupervisionLoss(ce)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255
    heads = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(4)]
    want = sum(ce(h, target) for h in heads) / 4
    torch.testing.assert_close(loss(heads, target), want)
    torch.testing.assert_close(loss(heads[0], target), ce(heads[0], target))
    torch.testing.assert_close(loss(tuple(heads), target), want)
    weighted = DeepSupervisionLoss(ce, weights=[0, 0, 0, 2])
    torch.testing.assert_close(weighted(heads, target), ce(heads[3], target))
    loss(heads, target).backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
    # half-precision logits (autocast) are scored in float32
    assert loss([h.detach().half() for h in heads], target).dtype == torch.float32
    with pytest.raises(ValueError, match="empty list"):
        loss([], target)
    with pytest.raises(ValueError, match="3 deep-supervision weights for 4 heads"):
        DeepSupervisionLoss(ce, weights=[1, 1, 1])(heads, target)
    with pytest.raises(ValueError, match="non-negative"):
        DeepSupervisionLoss(ce, weights=[-1, 2])


def test_one_deeply_supervised_training_step():
    # What the trainer does with the wrapped criterion: every head gets a gradient.
    model = unet_pp(num_classes=1).train()
    criterion = DeepSupervisionLoss(build_loss("dice_ce", mode="binary"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    loss = criterion(model(x), target)
    loss.backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in model.heads)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 1, 32, 32)


def test_dac_and_rmp_blocks():
    dac, rmp = DACBlock(8), RMPBlock(8)
    x = torch.randn(1, 8, 7, 9)
    assert dac(x).shape == x.shape
    out = rmp(x)
    assert out.shape == (1, 12, 7, 9)
    assert torch.equal(out[:, 4:], x)  # the input passes through after the 4 pooled maps
    # maps smaller than the largest pool still work (ceil_mode), down to 1 x 1
    assert rmp(torch.randn(1, 8, 1, 1)).shape == (1, 12, 1, 1)


@pytest.mark.parametrize("name,minimum", [("unet_plus_plus", 8), ("attention_unet", 8),
                                          ("r2unet", 8), ("segnet", 32), ("vgg16_unet", 16),
                                          ("resnet50_unet", 32)])
def test_zoo_refuses_inputs_smaller_than_its_poolings(name, minimum):
    kwargs = TINY[name]
    model = pixelwise.build_model(name, **kwargs).eval()
    c_in = kwargs.get("in_channels", 3)
    with torch.no_grad():
        assert model(torch.randn(1, c_in, minimum, minimum)).shape[-2:] == (minimum, minimum)
        with pytest.raises(ValueError,
                           match=f"{minimum - 1}x{minimum} is too small.*{minimum} pixels"):
            model(torch.randn(1, c_in, minimum - 1, minimum))


def test_deeply_supervised_unet_plus_plus_predicts_tiled_with_tta(tmp_path):
    # Prediction runs the model in eval mode: one tensor, whatever the training form.
    import numpy as np

    from pixelwise.inference.predict import Predictor

    kwargs = TINY["unet_plus_plus"]
    model = unet_pp()
    path = pixelwise.save_checkpoint(tmp_path / "m.pt", model, "unet_plus_plus", kwargs,
                                     ["a", "b", "c"], mean=(0.5,) * 3, std=(0.25,) * 3)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for optimize in (False, True):
        prediction = Predictor(path, tile_size=32, tta=True, fast=optimize).predict(image)
        assert prediction.mask.shape == (50, 70)
        assert prediction.probs.shape == (3, 50, 70)
