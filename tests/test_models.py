"""Model zoo: the contract every registered model keeps, paper parameter counts, weight loading."""
import functools
import hashlib
import http.server
import threading

import pytest
import torch

import pixelwise
from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (ResNet34Encoder, VGG16Backbone,
                                        resnet_state_dict_for_encoder, vgg16_to_fcn_state_dict)
from pixelwise.models.fcn import bilinear_kernel, upsampler

from common import TINY, torchvision_resnet34_layout, torchvision_vgg16_layout


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def classifier_layers(model, num_classes):
    """The trainable convolutions that output ``num_classes`` channels: heads, score layers."""
    return [m for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
            and m.out_channels == num_classes and m.weight.requires_grad]


def class_gradients(layer):
    """Per output channel, the summed |gradient| of each parameter of a convolution."""
    out = []
    for p in layer.parameters():
        # ConvTranspose2d weights are (in, out, kh, kw); every other parameter is out-first.
        dim = 1 if isinstance(layer, torch.nn.ConvTranspose2d) and p.ndim > 1 else 0
        out.append(p.grad.movedim(dim, 0).reshape(p.shape[dim], -1).abs().sum(1))
    return out


def test_registry_lists_every_model_and_rejects_unknown():
    assert pixelwise.list_models() == sorted(TINY)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        pixelwise.build_model("nope")
    with pytest.raises(ValueError, match="already registered"):
        pixelwise.register_model(pixelwise.models.unet.unet)


def test_model_parameters_are_the_builders_keywords_with_defaults():
    from pixelwise.models.registry import model_parameters

    fcn = model_parameters("fcn8s")
    assert "num_classes" in fcn and "in_channels" not in fcn       # VGG16 takes RGB only
    unet = model_parameters("unet")
    assert list(unet)[:3] == ["in_channels", "num_classes", "base_channels"]
    assert unet["base_channels"].default == 32 and unet["padding"].default == "same"
    with pytest.raises(ValueError, match="unknown model 'nope'; available: "):
        model_parameters("nope")


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_contract(name, tmp_path):
    kwargs = TINY[name]
    torch.manual_seed(0)
    model = pixelwise.build_model(name, **kwargs)
    c_in, c_out = kwargs.get("in_channels", 3), kwargs["num_classes"]

    # any size, odd ones included: logits at the input resolution
    model.eval()
    with torch.no_grad():
        for h, w in [(32, 32), (37, 45)]:
            out = model(torch.randn(2, c_in, h, w))
            assert out.shape == (2, c_out, h, w)

    # backward reaches every class of every classifier layer (each head of a deeply
    # supervised model; FCN's zero-initialised score layers too)
    model.train()
    out = model(torch.randn(2, c_in, 32, 32))
    heads = out if isinstance(out, list) else [out]
    assert all(h.shape == (2, c_out, 32, 32) for h in heads)
    sum((h * torch.randn_like(h)).sum() for h in heads).backward()  # non-zero where logits are 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    classifiers = classifier_layers(model, c_out)
    assert len(classifiers) >= len(heads)
    for layer in classifiers:
        for per_class in class_gradients(layer):
            assert per_class.shape == (c_out,) and bool((per_class > 0).all()), layer

    # save / load round trip rebuilds the same function from the file alone
    model.eval()
    x = torch.randn(1, c_in, 33, 35)
    classes = [f"c{i}" for i in range(c_out)]
    path = pixelwise.save_checkpoint(tmp_path / "m.pt", model, name, kwargs, classes,
                                     mean=(0.5,) * c_in, std=(0.25,) * c_in)
    ckpt = pixelwise.load_checkpoint(path)
    assert ckpt.class_names == classes and ckpt.model_name == name
    with torch.no_grad():
        assert torch.equal(model(x), ckpt.model(x))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("fcn32s", dict(num_classes=21), 134_346_581),
    ("fcn8s", dict(num_classes=21), 134_362_751),
    ("unet", dict(in_channels=1, num_classes=2, base_channels=64, depth=4, padding="valid",
                  batch_norm=False, upsample="transpose"), 31_030_658),
    ("unet", dict(in_channels=3, num_classes=2, base_channels=32, batch_norm=True), 7_766_018),
    ("resnet34_unet", dict(num_classes=2), 21_657_186),
    ("unet_small", dict(in_channels=1, num_classes=1), 487_449),
])
def test_paper_parameter_counts(name, kwargs, expected):
    assert trainable(pixelwise.build_model(name, **kwargs)) == expected


def test_fcn_learnable_upsampling_adds_the_transposed_convs():
    fixed = trainable(pixelwise.build_model("fcn8s", num_classes=21))
    learned = trainable(pixelwise.build_model("fcn8s", num_classes=21, learnable_upsampling=True))
    # upscore2 and upscore_pool4 are 21x21x4x4, upscore8 is 21x21x16x16, no bias
    assert learned - fixed == 2 * 21 * 21 * 16 + 21 * 21 * 256


def test_valid_unet_maps_572_to_388():
    model = pixelwise.build_model("unet", in_channels=1, num_classes=2, base_channels=4,
                                  padding="valid", batch_norm=False)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert model.output_shape(572, 572) == (388, 388)
    assert model.valid_input_size(388) == 572


@pytest.mark.parametrize("name", ["unet", "unet_small"])
def test_padded_unet_refuses_inputs_smaller_than_its_poolings(name):
    # Below 2**depth a side pools down to 0 px; a ValueError (the server's 422), not a crash
    # inside max_pool2d (RuntimeError, the server's 500).
    kwargs = TINY[name]
    model = pixelwise.build_model(name, **kwargs).eval()
    c_in, minimum = kwargs.get("in_channels", 3), 2 ** model.depth
    with torch.no_grad():
        assert model(torch.randn(1, c_in, minimum, minimum)).shape[-2:] == (minimum, minimum)
        for h, w in [(1, 1), (minimum - 1, 64), (64, minimum - 1)]:
            with pytest.raises(ValueError, match=f"{h}x{w} is too small.*{minimum} pixels"):
                model(torch.randn(1, c_in, h, w))


@pytest.mark.parametrize("size", [1, 2, 31, 32, 33, 63, 97])
def test_fcn_output_aligned_for_any_size(size):
    model = pixelwise.build_model("fcn8s", num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size + 2)).shape == (1, 2, size, size + 2)


def test_fcn_score_layers_start_at_zero():
    model = pixelwise.build_model("fcn8s", num_classes=5)
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


def test_fcn_dropout_is_element_wise_as_in_the_reference():
    # Caffe's Dropout drops single activations of fc6/fc7, not whole maps (Dropout2d).
    backbone = VGG16Backbone(dropout=0.5).train()
    torch.manual_seed(0)
    out = backbone.drop(torch.ones(1, 64, 8, 8))
    zeros_per_map = (out == 0).flatten(2).sum(-1)
    assert ((zeros_per_map > 0) & (zeros_per_map < 64)).any()


def test_bilinear_upsampling_of_a_constant_is_constant_inside():
    up = upsampler(3, 8, learnable=False)
    with torch.no_grad():
        out = up(torch.full((1, 3, 6, 7), 2.5))
    k = 16  # kernel size: the first/last k pixels see fewer than all contributions
    inner = out[..., k:-k, k:-k]
    assert inner.numel() > 0
    torch.testing.assert_close(inner, torch.full_like(inner, 2.5))
    # channels are upsampled independently
    w = bilinear_kernel(3, 4)
    assert w[0, 1].abs().sum() == 0 and w[0, 0].sum() == pytest.approx(4.0)


def test_torchvision_vgg16_converts_and_loads_strictly():
    tv = torchvision_vgg16_layout()
    converted = vgg16_to_fcn_state_dict(tv)
    backbone = VGG16Backbone()
    backbone.load_state_dict(converted, strict=True)
    assert torch.equal(backbone.fc6.weight.flatten(1), tv["classifier.0.weight"])
    assert torch.equal(backbone.fc7.weight.flatten(1), tv["classifier.3.weight"])
    assert torch.equal(backbone.features[28].bias, tv["features.28.bias"])

    tv["features.28.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="features.28.bias"):
        vgg16_to_fcn_state_dict(tv)
    del tv["features.28.bias"]
    with pytest.raises(ValueError, match="missing keys.*features.28.bias"):
        vgg16_to_fcn_state_dict(tv)


def test_torchvision_resnet34_loads_strictly_and_adapts_channels():
    tv = torchvision_resnet34_layout()
    encoder = ResNet34Encoder()
    encoder.load_state_dict(resnet_state_dict_for_encoder(tv), strict=True)
    assert torch.equal(encoder.layer4[2].bn2.running_var, tv["layer4.2.bn2.running_var"])
    grey = resnet_state_dict_for_encoder(tv, in_channels=1)
    torch.testing.assert_close(grey["conv1.weight"], tv["conv1.weight"].sum(1, keepdim=True))
    del tv["layer3.5.conv2.weight"]
    with pytest.raises(ValueError, match="layer3.5.conv2.weight"):
        resnet_state_dict_for_encoder(tv)


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pretrained_resnet34_from_url_with_hash_check(http_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    www, url = http_dir
    tv = torchvision_resnet34_layout()
    tmp = www / "tmp.pth"
    torch.save(tv, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    good = www / f"resnet34-{digest[:8]}.pth"
    tmp.rename(good)
    model = pixelwise.build_model("resnet34_unet", num_classes=2,
                                  pretrained=f"{url}/{good.name}")
    assert torch.equal(model.encoder.conv1.weight, tv["conv1.weight"])

    # a file whose name promises another hash is refused
    (www / "resnet34-deadbeef.pth").write_bytes(good.read_bytes())
    with pytest.raises(PixelwiseError, match="sha256"):
        pixelwise.build_model("resnet34_unet", pretrained=f"{url}/resnet34-deadbeef.pth")


def test_pretrained_offline_and_missing_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PixelwiseError, match="cannot download.*local path"):
        # port 9 on 127.0.0.1: nothing listens, as on an offline machine
        pixelwise.build_model("resnet34_unet", pretrained="http://127.0.0.1:9/resnet34-b627a593.pth")
    with pytest.raises(PixelwiseError, match="not found"):
        pixelwise.build_model("fcn32s", pretrained=str(tmp_path / "vgg16.pth"))


def test_pretrained_vgg16_from_local_file(tmp_path):
    tv = torchvision_vgg16_layout()
    torch.save(tv, tmp_path / "vgg16.pth")
    model = pixelwise.build_model("fcn32s", num_classes=4, pretrained=tmp_path / "vgg16.pth")
    assert torch.equal(model.backbone.features[0].weight, tv["features.0.weight"])


def test_models_command_refuses_zero_classes():
    from click.testing import CliRunner

    from pixelwise.cli import cli

    result = CliRunner().invoke(cli, ["models", "--num-classes", "0"])
    assert result.exit_code == 2 and "--num-classes" in result.output
