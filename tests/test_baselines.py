"""DCGAN and StyleGAN (v1) baselines behind the StyleGAN2 call signatures."""

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_modules.nets.baselines import DCGANDiscriminator, DCGANGenerator, StyleGAN1Generator, StyleGAN1Layer


@pytest.mark.parametrize("res", [32, 64, 128])
def test_dcgan_shapes_and_reference_layout(res):
    G = DCGANGenerator(z_dim=16, img_resolution=res, channel_base=256, channel_max=64)
    D = DCGANDiscriminator(img_resolution=res, channel_base=256, channel_max=64, feature_dim=8, num_classes=5)
    img = G(torch.randn(2, 16), truncation_psi=1.0, noise_mode="random")
    assert img.shape == (2, 3, res, res)
    logits, class_logits = D(img)
    assert logits.shape == (2,) and class_logits.shape == (2, 5)
    assert not hasattr(G, "mapping")  # no style mixing or path-length term for this baseline


def test_dcgan_defaults_match_the_voice_to_face_reference():
    G = DCGANGenerator(z_dim=64)
    convs = [m for m in G.net if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [1024, 512, 256, 128, 64, 3]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs[1:-1]] == [(4, 2, 1)] * 4
    assert sum(isinstance(m, nn.ReLU) for m in G.net) == 5
    D = DCGANDiscriminator()
    assert [m.out_channels for m in D.trunk if isinstance(m, nn.Conv2d)] == [32, 64, 128, 256, 512, 64]
    assert D.classifier is None and D(torch.randn(1, 3, 64, 64))[1] is None


def test_stylegan1_is_adain_without_progressive_growing():
    G = StyleGAN1Generator(
        z_dim=16,
        w_dim=16,
        img_resolution=32,
        mapping_layers=2,
        channel_base=256,
        channel_max=16,
        impl="torch",
    )
    assert G.num_ws == 8 and len(G.synthesis.layers) == 8
    ws = G.mapping(torch.randn(2, 16), truncation_psi=0.7)
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (2, 3, 32, 32)
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), img)
    # AdaIN: after instance norm, the style sets each channel's mean (shift) and std (scale + 1).
    layer = StyleGAN1Layer(4, 4, 16, 8, impl="torch")
    w = torch.randn(3, 16)
    out = layer(torch.randn(3, 4, 8, 8), w, noise_mode="none")
    scale, shift = layer.style(w).chunk(2, dim=1)
    torch.testing.assert_close(out.mean(dim=(2, 3)), shift, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), (scale + 1).abs(), atol=1e-4, rtol=1e-3)


def test_stylegan1_every_parameter_gets_a_gradient():
    G = StyleGAN1Generator(
        z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=8, impl="torch"
    )
    G(torch.randn(2, 16), noise_mode="random").square().sum().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="^DCGANGenerator: expects z"):
        DCGANGenerator(z_dim=16, channel_base=256, channel_max=16)(torch.randn(2, 8))
    with pytest.raises(ValueError, match="^DCGANDiscriminator: expects images"):
        DCGANDiscriminator(channel_base=256, channel_max=16)(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="power of 2"):
        StyleGAN1Generator(img_resolution=100)


CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf" / "model"


@pytest.mark.parametrize("group", ["encoder", "generator", "discriminator"])
def test_every_network_config_builds(group):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    fill = {
        "encoder": dict(in_features=16),
        "generator": dict(z_dim=16, img_resolution=8),
        "discriminator": dict(img_resolution=8, num_classes=3),
    }[group]
    names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert names, f"no configs in {CONF / group}"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for name in names:
            cfg = compose(f"{group}/{name}")[group]
            # Paper widths are too slow for a unit test; the config's own arguments are what is checked.
            small = (
                {"widths": [4, 4, 4, 4], "embed_dim": 8}
                if group == "encoder"
                else {"channel_base": 32, "channel_max": 4}
            )
            net = instantiate(cfg, **fill, **small, _convert_="all")
            assert type(net).__name__ in cfg["_target_"], name
