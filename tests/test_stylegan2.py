"""StyleGAN2 generator and discriminator: shapes, equalised lr, gradients, truncation, noise, clamping."""

import math

import pytest
import torch

from lightning_modules.nets.stylegan2 import (
    Discriminator,
    FullyConnectedLayer,
    Generator,
    channels_per_resolution,
)

TINY = dict(channel_base=256, channel_max=16)  # CPU-sized widths; the layer structure is the paper's


def tiny_G(res=32, **kw):
    torch.manual_seed(0)
    return Generator(z_dim=16, w_dim=16, img_resolution=res, mapping_layers=2, impl="torch", **{**TINY, **kw})


def tiny_D(res=32, **kw):
    torch.manual_seed(0)
    return Discriminator(img_resolution=res, impl="torch", **{**TINY, **kw})


@pytest.mark.parametrize("res", [32, 64, 128, 256])
def test_shapes(res):
    G, D = tiny_G(res), tiny_D(res, num_classes=5)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    z = torch.randn(2, 16)
    ws = G.mapping(z)
    assert ws.shape == (2, G.num_ws, 16)
    img = G.synthesis(ws)
    assert img.shape == (2, 3, res, res)
    logits, class_logits = D(img)
    assert logits.shape == (2,) and class_logits.shape == (2, 5)


def test_channel_rule():
    G = Generator(z_dim=8, w_dim=8, img_resolution=64, channel_base=2048, channel_max=48, impl="torch")
    assert channels_per_resolution(64, 2048, 48) == {4: 48, 8: 48, 16: 48, 32: 48, 64: 32}
    assert G.synthesis.b64.conv1.weight.shape[:2] == (32, 32)
    assert G.synthesis.b64.conv0.weight.shape[:2] == (32, 48)
    D = Discriminator(img_resolution=64, channel_base=2048, channel_max=48)
    assert D.b64.conv1.weight.shape[:2] == (48, 32) and D.b4.fc.in_features == 48 * 16


def test_equalised_lr_scales():
    G = tiny_G()
    fc = G.mapping.fc0
    assert fc.weight_gain == pytest.approx(0.01 / math.sqrt(16)) and fc.bias_gain == 0.01
    assert G.synthesis.b32.conv1.affine.weight_gain == pytest.approx(1 / math.sqrt(16))
    assert G.synthesis.b32.torgb.weight_gain == pytest.approx(1 / math.sqrt(G.synthesis.b32.torgb.weight[0].numel()))
    torch.manual_seed(1)
    layer = FullyConnectedLayer(400, 300, lr_multiplier=0.01, bias_init=2.0)
    assert (layer.weight * layer.weight_gain).std().item() == pytest.approx(1 / math.sqrt(400), rel=0.05)
    x = torch.randn(4, 400)
    expected = x @ (layer.weight * 0.01 / 20).t() + 2.0 * 0.01
    torch.testing.assert_close(layer(x), expected)
    D = tiny_D()
    conv = D.b32.conv0
    assert conv.weight_gain == pytest.approx(1 / math.sqrt(conv.weight[0].numel()))


def test_every_parameter_gets_a_gradient():
    G, D = tiny_G(), tiny_D(num_classes=3)
    img = G(torch.randn(4, 16), noise_mode="random")
    logits, class_logits = D(img)
    (logits.sum() + class_logits.sum()).backward()
    for name, module in (("G", G), ("D", D)):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_double_backward_through_generator():
    G = tiny_G()
    ws = G.mapping(torch.randn(3, 16)).detach().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const")
    noise = torch.randn_like(img) / 32
    (grad_ws,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    pl = grad_ws.square().sum(2).mean(1).sqrt()
    pl.mean().backward()
    grads = [p.grad for p in G.synthesis.parameters() if p.grad is not None]
    assert G.synthesis.b32.conv1.weight.grad.abs().sum() > 0 and all(torch.isfinite(g).all() for g in grads)


def test_truncation_and_w_avg_tracking():
    G = tiny_G()
    z = torch.randn(5, 16)
    w = G.mapping(z)
    G.mapping.w_avg.copy_(torch.randn(16))
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), G.mapping.w_avg.expand_as(w).contiguous())
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, 2:], w[:, 2:])
    torch.testing.assert_close(half[:, :2], (w[:, :2] + G.mapping.w_avg) / 2)
    before = G.mapping.w_avg.clone()
    G.mapping(z, update_emas=True)
    torch.testing.assert_close(G.mapping.w_avg, w[:, 0].mean(0).lerp(before, 0.995))


def test_noise_modes():
    G = tiny_G()
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(2, 16))
    const = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), const)
    assert not torch.allclose(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.allclose(G.synthesis(ws, noise_mode="none"), const)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="loud")


def test_conv_clamp_bounds_every_rgb_contribution():
    G = tiny_G(conv_clamp=0.01)
    img = G(torch.randn(2, 16) * 10)
    # Each block adds one clamped ToRGB output; FIR up-sampling with a normalised filter keeps the bound.
    assert img.abs().max() <= 0.01 * len(G.synthesis.block_resolutions) + 1e-6


def test_identity_head_reads_the_trunk_before_minibatch_std():
    D = tiny_D(num_classes=4).eval()
    img = torch.randn(6, 3, 32, 32)
    logits, class_logits = D(img)  # batch 6, group size 4: the largest dividing group (3) is used
    alone_logits, alone_classes = D(img[:1])
    torch.testing.assert_close(alone_classes, class_logits[:1])
    assert not torch.allclose(alone_logits, logits[:1])  # the real/fake head sees the batch statistics


def test_bad_input_is_named():
    G, D = tiny_G(), tiny_D()
    """Each message names the network and argument, not this project's file."""
    with pytest.raises(ValueError, match=r"^MappingNetwork: expects z \[N, 16\], got \[2, 15\]"):
        G(torch.randn(2, 15))
    with pytest.raises(ValueError, match="^SynthesisNetwork: expects ws"):
        G.synthesis(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="^Discriminator: expects images"):
        D(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="^Generator: img_resolution must be a power of 2"):
        Generator(img_resolution=48)


def test_1024_px_has_18_ws():
    G = Generator(z_dim=8, w_dim=8, img_resolution=1024, mapping_layers=1, channel_base=2048, channel_max=4)
    assert G.num_ws == 18 and G.synthesis.b1024.conv1.weight.shape[0] == 2
    assert G(torch.randn(1, 8), noise_mode="const").shape == (1, 3, 1024, 1024)


def test_output_bias_adds_to_the_image_and_learns():
    from lightning_modules.nets.stylegan2 import Generator

    kw = dict(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=64, channel_max=8, impl="torch")
    torch.manual_seed(0)
    plain = Generator(**kw)
    torch.manual_seed(0)
    G = Generator(img_bias=True, **kw)
    assert set(G.state_dict()) - set(plain.state_dict()) == {"synthesis.img_bias"}
    z = torch.randn(2, 8)
    torch.testing.assert_close(G(z, noise_mode="const"), plain(z, noise_mode="const"))  # zero until set
    face = torch.rand(3, 8, 8) * 2 - 1
    G.synthesis.set_img_bias(face)
    torch.testing.assert_close(G(z, noise_mode="const"), plain(z, noise_mode="const") + face)
    upstream = torch.randn(2, 3, 8, 8)
    (G(z, noise_mode="const") * upstream).sum().backward()
    torch.testing.assert_close(G.synthesis.img_bias.grad, upstream.sum(0))
    with pytest.raises(ValueError, match=r"set_img_bias: image must be \[3, 8, 8\], got \[3, 4, 4\]"):
        G.synthesis.set_img_bias(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="img_bias=True"):
        plain.synthesis.set_img_bias(face)


def test_generator_without_noise_inputs():
    from lightning_modules.nets.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(
        z_dim=8,
        w_dim=8,
        img_resolution=16,
        mapping_layers=1,
        channel_base=64,
        channel_max=8,
        use_noise=False,
        impl="torch",
    )
    assert not any("noise" in k for k in G.state_dict())
    z = torch.randn(2, 8)
    torch.testing.assert_close(G(z, noise_mode="random"), G(z, noise_mode="const"))  # nothing random left
