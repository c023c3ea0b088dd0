"""BatchNorm folding, channels_last and torch.compile keep the outputs (float tolerance)."""
import pytest
import torch
import torch.nn as nn

from pixelwise.fast.optimize import optimize_for_inference
from pixelwise.models import build_model, list_models
from pixelwise.fast.fold import count_batchnorms, fold_batchnorm, fold_conv_bn
from pixelwise.fast.gemm import GemmConv2d
from common import TINY


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones fold to identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def test_every_model_has_tiny_settings():
    assert sorted(TINY) == list_models()


@pytest.mark.parametrize("name", sorted(TINY))
def test_folded_model_matches_original(name):
    torch.manual_seed(0)
    kwargs = TINY[name]
    model = randomize(build_model(name, **kwargs))
    before = count_batchnorms(model)
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0
    assert count_batchnorms(model) == before  # the original is left alone
    if before == 0:  # FCNs (VGG16 has no BatchNorm): folding must change nothing at all
        want = model.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in folded.state_dict().items())
        return
    x = torch.randn(2, kwargs.get("in_channels", 3), 37, 45)
    with torch.no_grad():
        want, got = model(x), folded(x)
    scale = want.abs().max().clamp_min(1.0)
    assert (got - want).abs().max() / scale < 1e-5


def test_fold_transposed_conv_with_groups_by_hand():
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    bn = randomize(nn.Sequential(nn.BatchNorm2d(6)))[0]
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        want = bn(conv(x))
        fold_conv_bn(conv, bn)
        got = conv(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fold_conv_without_bias():
    conv = nn.Conv2d(3, 5, 3, bias=False)
    bn = randomize(nn.Sequential(nn.BatchNorm2d(5)))[0]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = bn(conv(x))
        fold_conv_bn(conv, bn)
        got = conv(x)
    assert conv.bias is not None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class SharedOutput(nn.Module):
    """The conv output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Untraceable(nn.Module):
    """Data-dependent control flow defeats fx; Sequential pairs still fold."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:
            return self.block(x)
        return self.block(-x)


def test_fold_only_safe_pairs():
    model = randomize(SharedOutput())
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 1
    # BatchNorm without running statistics uses each batch's own: nothing constant to fold.
    batch_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    folded = fold_batchnorm(batch_stats)
    assert count_batchnorms(folded) == 1
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), batch_stats.eval()(x))
    model = randomize(Untraceable())
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_channels_last_keeps_outputs_and_methods():
    torch.manual_seed(0)
    model = randomize(build_model("unet", in_channels=1, num_classes=2, base_channels=4,
                                  depth=2, padding="valid"))
    fast = optimize_for_inference(model, fold_bn=True, channels_last=True)
    assert fast.output_shape(92, 92) == (52, 52)  # still a UNet
    assert fast.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(fast.head, GemmConv2d)  # the 1x1 head as a matrix product, on CPU
    x = torch.randn(2, 1, 92, 92)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-4)
    assert model.training is False and count_batchnorms(model) > 0  # the original is untouched


@pytest.mark.slow
def test_compile_with_freezing_matches():
    torch.manual_seed(0)
    model = randomize(build_model("unet", in_channels=3, num_classes=2, base_channels=4, depth=2))
    fast = optimize_for_inference(model, channels_last=True, compile=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


class SharedConvTwoNorms(nn.Module):
    """One conv called twice, each call followed by its own BatchNorm: neither may fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))


def test_shared_conv_folds_only_with_its_one_batchnorm():
    model = randomize(SharedConvTwoNorms())
    assert count_batchnorms(fold_batchnorm(model)) == 2
    # R2U-Net's recurrent conv: a (conv, bn) pair called together three times folds
    r2 = randomize(build_model("r2unet", **TINY["r2unet"]))
    folded = fold_batchnorm(r2)
    assert count_batchnorms(folded) == 0
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), r2(x), atol=1e-4, rtol=1e-4)
