"""StyleGAN2 generator and discriminator with NVlabs stylegan2-ada-pytorch semantics and parameter names.

The layers run on the ops in `kernels/` (modulated conv, bias + activation, FIR resampling); the parameter
names equal NVlabs' (`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, ...), so an NVlabs state dict
loads as is.
`lightning_modules/io/legacy.py` turns the two public checkpoint formats (rosinality, NVlabs pickles) into a
`Generator`.
"""

import math

import torch
from torch import nn

import kernels
from kernels.bias_act import ACTIVATIONS
from kernels.shapes import assert_shape

RESAMPLE_FILTER = [1, 3, 3, 1]


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def channels_per_resolution(img_resolution, channel_base, channel_max):
    """{r: min(channel_base // r, channel_max)} for r = 4, 8, ..., img_resolution."""
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(img_resolution)) + 1)}


def _check_resolution(img_resolution, where):
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"{where}: img_resolution must be a power of 2 >= 4, got {img_resolution}")


# ----------------------------------------------------------------------------------------------------
# Layers with equalised learning rate: weights are stored N(0, 1) and scaled at run time.
# ----------------------------------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        in_features,  # Input features.
        out_features,  # Output features.
        bias=True,  # Learn a bias?
        activation="linear",  # linear | relu | lrelu (default gain applied, √2 for lrelu).
        lr_multiplier=1.0,  # Learning-rate multiplier: weights stored ×1/lr, used ×lr.
        bias_init=0.0,  # Initial bias.
        impl="auto",  # kernels implementation.
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
        in_channels,  # Input channels.
        out_channels,  # Output channels.
        kernel_size,  # Width and height of the kernel.
        bias=True,  # Learn a bias?
        activation="linear",  # linear | relu | lrelu.
        down=1,  # Down-sampling factor (1 or 2).
        conv_clamp=None,  # Clamp the output to ±conv_clamp (None = off).
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
        b = self.bias.to(x.dtype) if self.bias is not None else None  # float16 layers stay float16
        return kernels.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp, impl=self.impl)


# ----------------------------------------------------------------------------------------------------
# Generator.
# ----------------------------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim,  # Input latent (here: the voice embedding, optionally ‖ noise) dimensionality.
        w_dim,  # Intermediate latent dimensionality.
        num_ws,  # Number of ws to broadcast to.
        num_layers=8,  # Number of FC layers.
        lr_multiplier=0.01,  # Learning-rate multiplier of the FC layers.
        w_avg_beta=0.995,  # Decay of the running mean of w (used for truncation).
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
            raise ValueError(f"MappingNetwork: expects z [N, {self.z_dim}], got {list(z.shape)}")
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
        in_channels,  # Input channels.
        out_channels,  # Output channels.
        w_dim,  # Intermediate latent dimensionality.
        resolution,  # Output resolution.
        kernel_size=3,  # Convolution kernel size.
        up=1,  # Up-sampling factor (1 or 2).
        use_noise=True,  # Per-pixel noise with a learned strength?
        conv_clamp=None,  # Clamp the output to ±conv_clamp (None = off).
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
    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels,
        channels,
        conv_clamp=None,
        impl="auto",
        use_noise=True,
        img_bias=False,  # A learned per-pixel output bias [C, S, S] (not in NVlabs; zero until set).
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = sorted(channels)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, conv_clamp, impl, use_noise)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)
        # An image-sized bias lets the output start at the data's mean face (set_img_bias), as one starts a
        # regressor's last bias at the target mean: the blocks then learn deviations from a face, not a face.
        self.img_bias = nn.Parameter(torch.zeros([img_channels, img_resolution, img_resolution])) if img_bias else None

    @torch.no_grad()
    def set_img_bias(self, image):
        """Start the output bias at `image` [C, S, S] (e.g. the mean training face, in [-1, 1])."""
        assert_shape(image, [self.img_channels, self.img_resolution, self.img_resolution], "set_img_bias: image")
        if self.img_bias is None:
            raise ValueError("SynthesisNetwork.set_img_bias: needs a synthesis built with img_bias=True")
        self.img_bias.copy_(image)

    def forward(self, ws, noise_mode="random"):
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"SynthesisNetwork: expects ws [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"SynthesisNetwork: noise_mode must be random|const|none, got {noise_mode!r}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode)
            w_idx += block.num_conv
        return img if self.img_bias is None else img + self.img_bias.to(img.dtype)


class Generator(nn.Module):
    def __init__(
        self,
        z_dim=512,  # Input latent dimensionality (the voice embedding, optionally ‖ noise).
        w_dim=512,  # Intermediate latent dimensionality.
        img_resolution=64,  # Output resolution (power of 2).
        img_channels=3,  # Output channels.
        mapping_layers=8,  # FC layers of the mapping network.
        channel_base=16384,  # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max=512,
        conv_clamp=None,  # Clamp conv outputs to ±conv_clamp (NVlabs' pretrained models: 256).
        impl="auto",  # kernels implementation: auto | torch | triton.
        channels=None,  # Explicit {resolution: channels}, overriding channel_base/max (importers).
        mapping_lr_multiplier=0.01,  # Learning-rate multiplier of the mapping network.
        w_avg_beta=0.995,  # Decay of the tracked mean w.
        use_noise=True,  # Per-pixel noise inputs (NVlabs); False: none (no noise_const/strength).
        img_bias=False,  # Learned per-pixel output bias, started at the mean face by the GAN module.
    ):
        super().__init__()
        _check_resolution(img_resolution, "Generator")
        # The arguments, kept as NVlabs' persistence keeps them: a G built from a file (model.generator_init)
        # records them in the run's hyper-parameters, so its checkpoint rebuilds it without that file.
        self.init_kwargs = dict(
            z_dim=z_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_layers=mapping_layers,
            conv_clamp=conv_clamp,
            channels={
                int(r): int(c)
                for r, c in (channels or channels_per_resolution(img_resolution, channel_base, channel_max)).items()
            },
            mapping_lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
            use_noise=use_noise,
            img_bias=img_bias,
        )
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
                f"Generator: channels must name every resolution 4...{img_resolution}, got {sorted(channels)}"
            )
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channels, conv_clamp, impl, use_noise, img_bias
        )
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

    def __init__(
        self, in_channels, tmp_channels, out_channels, img_channels, conv_clamp=None, use_fp16=False, impl="auto"
    ):
        super().__init__()
        self.in_channels, self.use_fp16 = in_channels, use_fp16
        kwargs = dict(conv_clamp=conv_clamp, impl=impl)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **kwargs)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **kwargs)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **kwargs)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, **kwargs)

    def forward(self, x):
        x = x.to(torch.float16 if self.use_fp16 else torch.float32)
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
        img_resolution=64,  # Input resolution (power of 2).
        img_channels=3,  # Input channels.
        channel_base=16384,  # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max=512,
        num_classes=0,  # Identities of the classifier head (0 = no head).
        mbstd_group_size=4,  # Group size of the minibatch standard deviation (None = whole batch).
        conv_clamp=None,  # Clamp conv outputs to ±conv_clamp.
        num_fp16_res=0,  # The highest this many resolutions run in float16, as NVlabs' mixed precision (0 = none).
        impl="auto",
    ):
        super().__init__()
        _check_resolution(img_resolution, "Discriminator")
        self.img_resolution, self.img_channels, self.num_classes = img_resolution, img_channels, num_classes
        self.num_fp16_res = num_fp16_res
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = sorted((r for r in channels if r > 4), reverse=True)
        fp16_resolution = max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, channels[res], channels[res // 2], img_channels, conv_clamp, res >= fp16_resolution, impl
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], mbstd_group_size, conv_clamp=conv_clamp, impl=impl)
        self.classifier = IdentityHead(channels[4], num_classes, impl) if num_classes > 0 else None

    def forward(self, img):
        """img [N, C, R, R] -> (real/fake logits [N], identity logits [N, num_classes] or None)."""
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(
                f"Discriminator: expects images [N, {self.img_channels}, "
                f"{self.img_resolution}, {self.img_resolution}], got {list(img.shape)}"
            )
        x = img.to(torch.float32)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        x = x.to(torch.float32)
        class_logits = self.classifier(x) if self.classifier is not None else None
        return self.b4(x).squeeze(1), class_logits
