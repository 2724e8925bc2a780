"""StyleGAN2 generator and discriminator with NVlabs stylegan2-ada-pytorch semantics and parameter names.

The layers run on the ops in `kernels/` (modulated conv, bias + activation, FIR resampling); the parameter
names equal NVlabs' (`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, ...), so an NVlabs state dict
loads as is.
`import_rosinality` and `import_nvlabs` turn the two public checkpoint formats into a `Generator`.
"""

import argparse
import collections
import io
import math
import pickle
from pathlib import Path

import torch
from torch import nn

import kernels
from kernels.bias_act import ACTIVATIONS

RESAMPLE_FILTER = [1, 3, 3, 1]


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def channels_per_resolution(img_resolution, channel_base, channel_max):
    """{r: min(channel_base // r, channel_max)} for r = 4, 8, ..., img_resolution."""
    return {
        2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(img_resolution)) + 1)
    }


def _check_resolution(img_resolution, where):
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(
            f"lightning_modules/stylegan2.py: {where} img_resolution must be a power of 2 >= 4, "
            f"got {img_resolution}"
        )


# ----------------------------------------------------------------------------------------------------
# Layers with equalised learning rate: weights are stored N(0, 1) and scaled at run time.
# ----------------------------------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        in_features,            # Input features.
        out_features,           # Output features.
        bias=True,              # Learn a bias?
        activation="linear",    # linear | relu | lrelu (default gain applied, √2 for lrelu).
        lr_multiplier=1.0,      # Learning-rate multiplier: weights stored ×1/lr, used ×lr.
        bias_init=0.0,          # Initial bias.
        impl="auto",            # kernels implementation.
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation, self.impl = activation, impl
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return kernels.bias_act(x.matmul(w.t()), b, act=self.activation, impl=self.impl)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional FIR down-sampling (the discriminator's layers)."""

    def __init__(
        self,
        in_channels,            # Input channels.
        out_channels,           # Output channels.
        kernel_size,            # Width and height of the kernel.
        bias=True,              # Learn a bias?
        activation="linear",    # linear | relu | lrelu.
        down=1,                 # Down-sampling factor (1 or 2).
        conv_clamp=None,        # Clamp the output to ±conv_clamp (None = off).
        impl="auto",
    ):
        super().__init__()
        self.activation, self.down, self.conv_clamp, self.impl = activation, down, conv_clamp, impl
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation][1]
        self.register_buffer("resample_filter", kernels.setup_filter(RESAMPLE_FILTER), persistent=False)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        x = kernels.conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            down=self.down,
            padding=self.padding,
            flip_weight=True,
            impl=self.impl,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return kernels.bias_act(
            x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, impl=self.impl
        )


# ----------------------------------------------------------------------------------------------------
# Generator.
# ----------------------------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim,                  # Input latent (here: the voice embedding, optionally ‖ noise) dimensionality.
        w_dim,                  # Intermediate latent dimensionality.
        num_ws,                 # Number of ws to broadcast to.
        num_layers=8,           # Number of FC layers.
        lr_multiplier=0.01,     # Learning-rate multiplier of the FC layers.
        w_avg_beta=0.995,       # Decay of the running mean of w (used for truncation).
        impl="auto",
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier, impl=impl
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"lightning_modules/stylegan2.py: mapping expects z [N, {self.z_dim}], got {list(z.shape)}"
            )
        x = normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (+ demodulation), optional ×2 FIR up-sampling, noise, bias + lrelu·√2."""

    def __init__(
        self,
        in_channels,            # Input channels.
        out_channels,           # Output channels.
        w_dim,                  # Intermediate latent dimensionality.
        resolution,             # Output resolution.
        kernel_size=3,          # Convolution kernel size.
        up=1,                   # Up-sampling factor (1 or 2).
        use_noise=True,         # Per-pixel noise with a learned strength?
        conv_clamp=None,        # Clamp the output to ±conv_clamp (None = off).
        impl="auto",
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp, self.impl = (
            resolution,
            up,
            use_noise,
            conv_clamp,
            impl,
        )
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS["lrelu"][1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1, impl=impl)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x, w, noise_mode="random", gain=1):
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = (
                torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device, dtype=x.dtype)
                * self.noise_strength
            )
        elif self.use_noise and noise_mode == "const":
            noise = (self.noise_const * self.noise_strength)[None, None]
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return kernels.modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=True,
            up=self.up,
            padding=self.padding,
            impl=self.impl,
            noise=noise,
            bias=self.bias,
            act="lrelu",
            gain=self.act_gain * gain,
            clamp=clamp,
        )


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv without demodulation (styles × 1/√fan_in), plus bias."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, impl="auto"):
        super().__init__()
        self.conv_clamp, self.impl = conv_clamp, impl
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1, impl=impl)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        return kernels.modulated_conv2d(
            x, self.weight, styles, demodulate=False, impl=self.impl, bias=self.bias, clamp=self.conv_clamp
        )


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' architecture: [const | up-conv], conv, ToRGB added to the up-sampled
    image."""

    def __init__(
        self, in_channels, out_channels, w_dim, resolution, img_channels, conv_clamp=None, impl="auto", use_noise=True
    ):
        super().__init__()
        self.in_channels, self.impl = in_channels, impl
        self.register_buffer("resample_filter", kernels.setup_filter(RESAMPLE_FILTER), persistent=False)
        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, impl=impl, use_noise=use_noise)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp, impl=impl)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x, img, ws, noise_mode="random"):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else kernels.upsample2d(img, self.resample_filter, impl=self.impl) + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channels, conv_clamp=None, impl="auto", use_noise=True):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = sorted(channels)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, conv_clamp, impl, use_noise)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws, noise_mode="random"):
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"lightning_modules/stylegan2.py: synthesis expects ws [N, {self.num_ws}, "
                f"{self.w_dim}], got {list(ws.shape)}"
            )
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(
                f"lightning_modules/stylegan2.py: noise_mode must be random|const|none, got {noise_mode!r}"
            )
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    def __init__(
        self,
        z_dim=512,              # Input latent dimensionality (the voice embedding, optionally ‖ noise).
        w_dim=512,              # Intermediate latent dimensionality.
        img_resolution=64,      # Output resolution (power of 2).
        img_channels=3,         # Output channels.
        mapping_layers=8,       # FC layers of the mapping network.
        channel_base=16384,     # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max=512,
        conv_clamp=None,             # Clamp conv outputs to ±conv_clamp (NVlabs' pretrained models: 256).
        impl="auto",                 # kernels implementation: auto | torch | triton.
        channels=None,  # Explicit {resolution: channels}, overriding channel_base/max (importers).
        mapping_lr_multiplier=0.01,  # Learning-rate multiplier of the mapping network.
        w_avg_beta=0.995,            # Decay of the tracked mean w.
        use_noise=True,              # Per-pixel noise inputs (NVlabs); False: none (no noise_const/strength).
    ):
        super().__init__()
        _check_resolution(img_resolution, "Generator")
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = (
            z_dim,
            w_dim,
            img_resolution,
            img_channels,
        )
        if channels is None:
            channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        channels = {int(r): int(c) for r, c in channels.items()}
        if sorted(channels) != sorted(channels_per_resolution(img_resolution, 1, 1)):
            raise ValueError(
                f"lightning_modules/stylegan2.py: channels must name every resolution 4..."
                f"{img_resolution}, got {sorted(channels)}"
            )
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channels, conv_clamp, impl, use_noise)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta, impl
        )

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random", update_emas=False):
        ws = self.mapping(
            z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, noise_mode=noise_mode)


# ----------------------------------------------------------------------------------------------------
# Discriminator ('resnet' architecture) with an identity classifier on the shared trunk.
# ----------------------------------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """Two 3×3 convs (the second ×2 FIR down) plus a 1×1 down-sampling skip, both scaled by √0.5."""

    def __init__(self, in_channels, tmp_channels, out_channels, img_channels, conv_clamp=None, impl="auto"):
        super().__init__()
        self.in_channels = in_channels
        kwargs = dict(conv_clamp=conv_clamp, impl=impl)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **kwargs)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **kwargs)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **kwargs)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, **kwargs)

    def forward(self, x):
        if self.in_channels == 0:
            x = self.fromrgb(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Appends the feature standard deviation over groups of samples (NVlabs, F extra channels)."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        # NVlabs needs the batch to divide by the group; take the largest group size that does.
        g = next(g for g in range(min(self.group_size or n, n), 0, -1) if n % g == 0)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch std, 3×3 conv, FC, FC → one logit."""

    def __init__(self, in_channels, mbstd_group_size=4, mbstd_num_channels=1, conv_clamp=None, impl="auto"):
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            3,
            activation="lrelu",
            conv_clamp=conv_clamp,
            impl=impl,
        )
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu", impl=impl)
        self.out = FullyConnectedLayer(in_channels, 1, impl=impl)

    def forward(self, x):
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


class IdentityHead(nn.Module):
    """Face-identity classifier on the trunk's 4×4 features: FC + lrelu, FC → class logits."""

    def __init__(self, in_channels, num_classes, impl="auto"):
        super().__init__()
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu", impl=impl)
        self.out = FullyConnectedLayer(in_channels, num_classes, impl=impl)

    def forward(self, x):
        return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    def __init__(
        self,
        img_resolution=64,      # Input resolution (power of 2).
        img_channels=3,         # Input channels.
        channel_base=16384,     # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max=512,
        num_classes=0,          # Identities of the classifier head (0 = no head).
        mbstd_group_size=4,     # Group size of the minibatch standard deviation (None = whole batch).
        conv_clamp=None,        # Clamp conv outputs to ±conv_clamp.
        impl="auto",
    ):
        super().__init__()
        _check_resolution(img_resolution, "Discriminator")
        self.img_resolution, self.img_channels, self.num_classes = img_resolution, img_channels, num_classes
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = sorted((r for r in channels if r > 4), reverse=True)
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, channels[res], channels[res // 2], img_channels, conv_clamp, impl
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], mbstd_group_size, conv_clamp=conv_clamp, impl=impl)
        self.classifier = IdentityHead(channels[4], num_classes, impl) if num_classes > 0 else None

    def forward(self, img):
        """img [N, C, R, R] -> (real/fake logits [N], identity logits [N, num_classes] or None)."""
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(
                f"lightning_modules/stylegan2.py: Discriminator expects images [N, {self.img_channels}, "
                f"{self.img_resolution}, {self.img_resolution}], got {list(img.shape)}"
            )
        x = img.to(torch.float32)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        class_logits = self.classifier(x) if self.classifier is not None else None
        return self.b4(x).squeeze(1), class_logits


# ----------------------------------------------------------------------------------------------------
# Importers of the public checkpoint formats.
# ----------------------------------------------------------------------------------------------------


def _load_generator(G, state, source):
    """Load `state` into G, naming missing, unexpected and mis-shaped tensors."""
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: the checkpoint does not match a Generator: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return G


def _check_filter(tensor, source, key):
    expected = kernels.setup_filter(RESAMPLE_FILTER)
    t = tensor.to(torch.float32)
    if t.shape != expected.shape or not torch.allclose(t / t.sum(), expected, atol=1e-6):
        raise ValueError(f"{source}: {key} is not the [1,3,3,1] resampling filter this Generator uses")


def import_rosinality(src, w_avg_samples=10000, impl="auto"):
    """A Generator from a rosinality/stylegan2-pytorch checkpoint (path or loaded dict; `g_ema`, else `g`).

    Resolution, style dim, mapping depth and channels are read off the tensors. rosinality stores no mean w,
    so `mapping.w_avg` is estimated from `w_avg_samples` z drawn with a fixed seed (0 = leave it at zero)."""
    source = str(src) if isinstance(src, (str, Path)) else "rosinality checkpoint"
    if isinstance(src, (str, Path)):
        with torch.serialization.safe_globals([argparse.Namespace]):
            src = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(src, dict):
        raise ValueError(f"{source}: expected a dict, got {type(src).__name__}")
    sd = src.get("g_ema", src.get("g", src if "input.input" in src else None))
    if sd is None or "input.input" not in sd:
        raise ValueError(f"{source}: no rosinality generator state ('g_ema' or 'g' with 'input.input') found")

    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    num_blocks = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    img_resolution = 2 ** (num_blocks + 2)
    style_dim = sd["style.1.weight"].shape[1]
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    channels.update({2 ** (k + 3): sd[f"convs.{2 * k}.conv.weight"].shape[1] for k in range(num_blocks)})

    def styled(dst, src_prefix, noise_key):
        out = {
            f"{dst}.weight": sd[f"{src_prefix}.conv.weight"][0],
            f"{dst}.affine.weight": sd[f"{src_prefix}.conv.modulation.weight"],
            f"{dst}.affine.bias": sd[f"{src_prefix}.conv.modulation.bias"],
            f"{dst}.bias": sd[f"{src_prefix}.activate.bias"],
            f"{dst}.noise_strength": sd[f"{src_prefix}.noise.weight"].reshape([]),
            f"{dst}.noise_const": sd[f"noises.{noise_key}"][0, 0],
        }
        return out

    def to_rgb(dst, src_prefix):
        return {
            f"{dst}.weight": sd[f"{src_prefix}.conv.weight"][0],
            f"{dst}.affine.weight": sd[f"{src_prefix}.conv.modulation.weight"],
            f"{dst}.affine.bias": sd[f"{src_prefix}.conv.modulation.bias"],
            f"{dst}.bias": sd[f"{src_prefix}.bias"].reshape(-1),
        }

    try:
        for key in [k for k in sd if k.endswith("blur.kernel") or k.endswith("upsample.kernel")]:
            _check_filter(sd[key], source, key)
        state = {"mapping.w_avg": torch.zeros([style_dim]), "synthesis.b4.const": sd["input.input"][0]}
        for i in range(n_mlp):
            state[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
            state[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
        state.update(styled("synthesis.b4.conv1", "conv1", "noise_0"))
        state.update(to_rgb("synthesis.b4.torgb", "to_rgb1"))
        for k in range(num_blocks):
            b = f"synthesis.b{2 ** (k + 3)}"
            state.update(styled(f"{b}.conv0", f"convs.{2 * k}", f"noise_{2 * k + 1}"))
            state.update(styled(f"{b}.conv1", f"convs.{2 * k + 1}", f"noise_{2 * k + 2}"))
            state.update(to_rgb(f"{b}.torgb", f"to_rgbs.{k}"))
    except KeyError as err:
        raise ValueError(f"{source}: rosinality generator tensor {err} is missing") from None

    G = Generator(
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=img_resolution,
        mapping_layers=n_mlp,
        channels=channels,
        impl=impl,
    )
    _load_generator(G, state, source)
    if w_avg_samples:
        z = torch.randn([w_avg_samples, style_dim], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(z)[:, 0].mean(dim=0))
    return G


class _Opaque(dict):
    """Stands in for any object of an NVlabs pickle: keeps its state, items and constructor arguments as data
    (a dict subclass so that pickled dict subclasses such as dnnlib.EasyDict fill it too)."""

    state = None

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _Persistent(_Opaque):
    """An NVlabs `persistence.persistent_class` object; its `module_src` is kept as text and never run."""

    def __init__(self, meta):
        super().__init__()
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise pickle.UnpicklingError(f"unsupported persistent object {type(meta).__name__}")
        self.class_name, self.state = meta.get("class_name"), meta.get("state")


def _storage_from_bytes(data):
    # torch's own `_load_from_bytes` unpickles without restriction; weights_only=True reads tensors only.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    # Pickled backward hooks and metadata are dropped: only the storage view is rebuilt.
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}")
    hooks = collections.OrderedDict()
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, hooks)


def _rebuild_parameter(data, *_):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter's data is a {type(data).__name__}")
    return data  # a Parameter's tensor is all an importer needs


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
}
# NVlabs' own packages and torch.nn modules become inert stand-ins; their code is never imported.
_OPAQUE_PREFIXES = ("dnnlib.", "torch_utils.", "training.", "torch.nn.modules.")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_OPAQUE_PREFIXES) or module in ("dnnlib", "torch_utils", "training"):
            return type(name, (_Opaque,), {})
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: the NVlabs importer only reads "
            "tensors and constructor arguments"
        )


def _module_state(obj, prefix, out):
    """Collect parameters and persistent buffers of a pickled module tree into a flat state dict."""
    state = obj.state if isinstance(obj, _Opaque) else None
    if not isinstance(state, dict):
        raise ValueError(f"{prefix or 'G_ema'} is not a pickled torch module")
    non_persistent = state.get("_non_persistent_buffers_set", set()) or set()
    for kind in ("_parameters", "_buffers"):
        for key, tensor in (state.get(kind) or {}).items():
            if tensor is not None and key not in non_persistent:
                out[prefix + key] = tensor
    for key, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_state(child, f"{prefix}{key}.", out)
    return out


def _generator_from_nvlabs(state, init_kwargs, source, impl):
    kw = dict(init_kwargs)
    mapping_kwargs, synthesis_kwargs = (
        dict(kw.get("mapping_kwargs", {})),
        dict(kw.get("synthesis_kwargs", {})),
    )
    if kw.get("c_dim", 0):
        raise ValueError(
            f"{source}: class-conditional NVlabs generators (c_dim={kw['c_dim']}) are not supported"
        )
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise ValueError(
            f"{source}: only the 'skip' synthesis architecture is supported, "
            f"got {synthesis_kwargs['architecture']!r}"
        )
    try:
        G = Generator(
            z_dim=kw["z_dim"],
            w_dim=kw["w_dim"],
            img_resolution=kw["img_resolution"],
            img_channels=kw.get("img_channels", 3),
            mapping_layers=mapping_kwargs.get("num_layers", 8),
            channel_base=synthesis_kwargs.get("channel_base", 32768),
            channel_max=synthesis_kwargs.get("channel_max", 512),
            conv_clamp=synthesis_kwargs.get("conv_clamp"),
            impl=impl,
            mapping_lr_multiplier=mapping_kwargs.get("lr_multiplier", 0.01),
            w_avg_beta=mapping_kwargs.get("w_avg_beta", 0.995),
        )
    except KeyError as err:
        raise ValueError(f"{source}: init_kwargs lack {err}") from None
    state = dict(state)
    for key in [k for k in state if k.endswith("resample_filter")]:
        _check_filter(state.pop(key), source, key)
    return _load_generator(G, state, source)


def import_nvlabs(src, impl="auto"):
    """A Generator from an NVlabs stylegan2-ada-pytorch network pickle (`G_ema`), read without NVlabs' code by
    an unpickler that only rebuilds tensors and containers; or from a dict {"state_dict", "init_kwargs"}."""
    source = str(src) if isinstance(src, (str, Path)) else "NVlabs generator dict"
    if isinstance(src, (str, Path)):
        try:
            with open(src, "rb") as f:
                data = _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{source}: not a loadable NVlabs network pickle: {first_line}") from None
        if not isinstance(data, dict) or not isinstance(data.get("G_ema", data.get("G")), _Persistent):
            raise ValueError(f"{source}: expected an NVlabs pickle with a 'G_ema' (or 'G') network")
        net = data.get("G_ema", data.get("G"))
        if net.class_name != "Generator":
            raise ValueError(f"{source}: the network is a {net.class_name!r}, not an NVlabs Generator")
        try:
            state = _module_state(net, "", {})
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        return _generator_from_nvlabs(state, net.state.get("_init_kwargs", {}), source, impl)
    if not isinstance(src, dict) or "state_dict" not in src or "init_kwargs" not in src:
        raise ValueError(f"{source}: expected a path or a dict with 'state_dict' and 'init_kwargs'")
    return _generator_from_nvlabs(src["state_dict"], src["init_kwargs"], source, impl)
