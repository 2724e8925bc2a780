"""The paper's Table 2 baselines behind the StyleGAN2 call signatures.

- `DCGANGenerator` / `DCGANDiscriminator`: the voice-to-face networks of Wen et al. 2019 (transposed convs
  4/2/1 with ReLU; a LeakyReLU conv trunk to a 64-d feature shared by the real/fake and identity heads),
  generalised to any power-of-2 resolution by the channel rule min(channel_base // r, channel_max).
- `StyleGAN1Generator`: StyleGAN (v1) at a fixed resolution (no progressive growing): mapping network, learned
  constant, per layer conv → noise (per-channel strength) → bias + lrelu → instance norm → AdaIN style.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from lightning_modules.nets.stylegan2 import FullyConnectedLayer, MappingNetwork, channels_per_resolution

BLUR_FILTER = [1, 2, 1]  # StyleGAN (v1) blurs after nearest-neighbour up-sampling


def _log2_resolution(img_resolution, where):
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"{where}: img_resolution must be a power of 2 >= 4, got {img_resolution}")
    return int(math.log2(img_resolution))


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        z_dim=512,  # Input (voice embedding, optionally ‖ noise) size.
        img_resolution=64,  # Output resolution.
        img_channels=3,
        channel_base=4096,  # Channels at r: min(base // r, max): 1024, 512, 256, 128, 64 for 4..64 px.
        channel_max=1024,
    ):
        super().__init__()
        _log2_resolution(img_resolution, "DCGANGenerator")
        self.z_dim, self.img_resolution = z_dim, img_resolution
        ch = channels_per_resolution(img_resolution, channel_base, channel_max)
        layers = [nn.ConvTranspose2d(z_dim, ch[4], 4, 1, 0), nn.ReLU()]
        for res in sorted(ch)[1:]:
            layers += [nn.ConvTranspose2d(ch[res // 2], ch[res], 4, 2, 1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(ch[img_resolution], img_channels, 1, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, z, truncation_psi=1.0, noise_mode="random"):
        """z [N, z_dim] -> img [N, C, R, R]; truncation and noise do not apply to this generator."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"DCGANGenerator: expects z [N, {self.z_dim}], got {list(z.shape)}")
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    def __init__(
        self,
        img_resolution=64,
        img_channels=3,
        channel_base=2048,  # Channels at r: min(base // r, max): 32 at 64 px ... 512 at 4 px.
        channel_max=512,
        feature_dim=64,  # Size of the shared trunk feature.
        num_classes=0,  # Identities of the classifier head (0 = none).
    ):
        super().__init__()
        _log2_resolution(img_resolution, "DCGANDiscriminator")
        self.img_resolution, self.img_channels = img_resolution, img_channels
        ch = channels_per_resolution(img_resolution, channel_base, channel_max)
        layers = [nn.Conv2d(img_channels, ch[img_resolution], 1, 1, 0), nn.LeakyReLU(0.2)]
        for res in sorted(ch, reverse=True)[1:]:
            layers += [nn.Conv2d(ch[res * 2], ch[res], 3, 2, 1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ch[4], feature_dim, 4, 1, 0))
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(feature_dim, 1)
        self.classifier = nn.Linear(feature_dim, num_classes) if num_classes > 0 else None

    def forward(self, img):
        """img [N, C, R, R] -> (real/fake logits [N], identity logits [N, num_classes] or None)."""
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(
                f"DCGANDiscriminator: expects images [N, "
                f"{self.img_channels}, {self.img_resolution}, {self.img_resolution}], "
                f"got {list(img.shape)}"
            )
        h = self.trunk(img).flatten(1)
        return self.out(h).squeeze(1), (self.classifier(h) if self.classifier is not None else None)


class Conv2dEq(nn.Module):
    """Equalised-lr conv (weights N(0, 1), scaled by 1/√fan_in at run time), "same" padding."""

    def __init__(self, in_channels, out_channels, kernel_size=3, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)


class StyleGAN1Layer(nn.Module):
    """[nearest ×2 + conv + blur | conv | nothing], noise × per-channel strength, bias + lrelu·√2,
    instance norm, AdaIN (scale + 1, shift from w)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=False, conv=True, impl="auto"):
        super().__init__()
        self.resolution, self.up, self.impl = resolution, up, impl
        self.conv = Conv2dEq(in_channels, out_channels) if conv else None
        self.noise_strength = nn.Parameter(torch.zeros([out_channels]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.style = FullyConnectedLayer(w_dim, 2 * out_channels, impl=impl)
        self.register_buffer("blur_filter", kernels.setup_filter(BLUR_FILTER), persistent=False)
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x, w, noise_mode="random"):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.conv is not None:
            x = self.conv(x)
        if self.up:
            x = kernels.upfirdn2d(x, self.blur_filter, padding=1, impl=self.impl)
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength[None, :, None, None]
        elif noise_mode == "const":
            x = x + self.noise_const[None, None] * self.noise_strength[None, :, None, None]
        x = kernels.bias_act(x, self.bias, act="lrelu", impl=self.impl)
        x = F.instance_norm(x, eps=1e-8)
        scale, shift = self.style(w).chunk(2, dim=1)
        return x * (scale + 1)[:, :, None, None] + shift[:, :, None, None]


class StyleGAN1Synthesis(nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channels, impl="auto"):
        super().__init__()
        self.w_dim, self.img_resolution = w_dim, img_resolution
        self.const = nn.Parameter(torch.ones([channels[4], 4, 4]))
        # Two styled layers per resolution (at 4×4 the first has no conv), so num_ws = 2·log2(R) − 2.
        layers = [
            StyleGAN1Layer(channels[4], channels[4], w_dim, 4, conv=False, impl=impl),
            StyleGAN1Layer(channels[4], channels[4], w_dim, 4, impl=impl),
        ]
        for res in sorted(channels)[1:]:
            layers.append(StyleGAN1Layer(channels[res // 2], channels[res], w_dim, res, up=True, impl=impl))
            layers.append(StyleGAN1Layer(channels[res], channels[res], w_dim, res, impl=impl))
        self.layers = nn.ModuleList(layers)
        self.num_ws = len(layers)
        self.torgb = Conv2dEq(channels[img_resolution], img_channels, 1, bias=True)

    def forward(self, ws, noise_mode="random"):
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"StyleGAN1Generator: synthesis expects ws [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}"
            )
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"StyleGAN1Generator: noise_mode must be random|const|none, got {noise_mode!r}")
        x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
        return self.torgb(x)


class StyleGAN1Generator(nn.Module):
    def __init__(
        self,
        z_dim=512,  # Input (voice embedding, optionally ‖ noise) size.
        w_dim=512,  # Intermediate latent size.
        img_resolution=64,
        img_channels=3,
        mapping_layers=8,  # FC layers of the mapping network (lr multiplier 0.01).
        channel_base=16384,  # Channels at r: min(channel_base // r, channel_max).
        channel_max=512,
        impl="auto",
    ):
        super().__init__()
        _log2_resolution(img_resolution, "StyleGAN1Generator")
        self.z_dim, self.w_dim, self.img_resolution = z_dim, w_dim, img_resolution
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.synthesis = StyleGAN1Synthesis(w_dim, img_resolution, img_channels, channels, impl)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, impl=impl)

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random", update_emas=False):
        ws = self.mapping(
            z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, noise_mode=noise_mode)
