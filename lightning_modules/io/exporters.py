"""Exporters, the importers' inverses (lightning_modules/io/legacy.py): a G (and the face prior's D) for the public
code's own loaders, rosinality's `Generator(...).load_state_dict` and NVlabs' `training.networks` classes
(experiments.export)."""

import torch

import kernels
from lightning_modules.io.legacy import IMG_BIAS_KEY, TORGB_BIAS_KEY
from lightning_modules.nets.latent import unconditional
from lightning_modules.nets.stylegan2 import RESAMPLE_FILTER, Generator


def _exportable(G, source):
    """(mapping, synthesis, architecture) of `G` as a public format can hold it: the G's own mapping where a
    voice head replaced it (the head maps voices, which no public loader has). The architecture is read off
    the modules that are exported, not the arguments G was built with. A feature neither format has is refused,
    naming `source` and the feature; a per-pixel output bias (img_bias) is written by `_with_img_bias`."""

    if not isinstance(G, Generator):
        raise ValueError(f"{source}: its generator is a {type(G).__name__}; only a StyleGAN2 Generator exports")
    mapping, synthesis = unconditional(G), G.synthesis
    layer = synthesis.b4.conv1
    arch = dict(
        z_dim=mapping.z_dim,
        w_dim=mapping.w_dim,
        img_resolution=synthesis.img_resolution,
        img_channels=synthesis.img_channels,
        num_layers=mapping.num_layers,
        lr_multiplier=mapping.fc0.bias_gain if mapping.num_layers else 0.01,  # bias_gain is the multiplier itself
        w_avg_beta=mapping.w_avg_beta,
        conv_clamp=layer.conv_clamp,
        use_noise=layer.use_noise,
        channels={r: getattr(synthesis, f"b{r}").conv1.weight.shape[0] for r in synthesis.block_resolutions},
    )
    return mapping, synthesis, arch


def _exported(tensor):
    return tensor.detach().to("cpu", torch.float32).clone()  # the file's own copy, whatever device G is on


# Keys beside the public ones (public loaders read only theirs): what our importers need to give back a G with a
# per-pixel output bias (img_bias) bit for bit.


def _with_img_bias(data, synthesis, top_bias_key, container):
    """Fold what folds of `synthesis.img_bias` (its per-channel mean) into the top ToRGB bias, `data[container]
    [top_bias_key]`, the one bias every output pixel gets; keep the bias and the unfolded ToRGB bias under
    IMG_BIAS_KEY and TORGB_BIAS_KEY. The public code then draws each image off by the per-pixel remainder
    (experiments.export measures it); our importers restore the G exactly."""
    bias = synthesis.img_bias
    if bias is None:
        return data
    top = data[container][top_bias_key]
    data[container][top_bias_key] = _exported(top + bias.mean(dim=(1, 2)).reshape(top.shape))
    return {**data, IMG_BIAS_KEY: _exported(bias), TORGB_BIAS_KEY: _exported(top)}


def rosinality_channel_multiplier(channels: dict[int, int]) -> int | None:
    """The `channel_multiplier` m with which rosinality's fixed table (512 up to 32 px, then 256·m at 64 px
    halving per resolution to 16·m at 1024 px) gives `channels`, or None where no m does."""
    if max(channels) > 1024:
        return None  # the table stops at 1024 px
    m = channels[64] // 256 if 64 in channels else 2  # below 64 px every m gives 512: rosinality's default
    table = {r: 512 if r <= 32 else 16384 * m // r for r in channels}
    return m if m >= 1 and table == channels else None


def _check_rosinality_can_express(arch: dict, source) -> None:
    """Refuse what rosinality's Generator has no setting for."""
    for bad, feature in (
        (arch["conv_clamp"] is not None, f"conv_clamp={arch['conv_clamp']} (rosinality's convs never clamp)"),
        (arch["img_channels"] != 3, f"img_channels={arch['img_channels']} (rosinality's ToRGB writes 3)"),
        (arch["z_dim"] != arch["w_dim"], f"z_dim={arch['z_dim']} != w_dim={arch['w_dim']} (its z is w_dim wide)"),
    ):
        if bad:
            raise ValueError(f"{source}: its generator has {feature}, which rosinality cannot express")


def export_rosinality(G, source="generator") -> dict:
    """{"g_ema", "latent_avg", "args"}: `G` as rosinality/stylegan2-pytorch's `Generator` names, shapes and orders
    its state dict (a strict load_state_dict fits), parameters unscaled as both store them; the inverse of
    import_rosinality. `latent_avg` is the mean w, `args` the constructor arguments: size, latent (style_dim),
    n_mlp, lr_mlp, and channel_multiplier where one reproduces the channels (rosinality_channel_multiplier;
    otherwise stock rosinality code needs its `channels` table set to args["channels"]).

    Without noise inputs (use_noise=False) the noise strengths and buffers are zeros: the same images. Refused:
    conv_clamp (rosinality never clamps), img_channels other than 3 and z_dim other than w_dim (both fixed in
    rosinality's Generator)."""
    mapping, synthesis, arch = _exportable(G, source)
    _check_rosinality_can_express(arch, source)
    blur = kernels.setup_filter(RESAMPLE_FILTER) * 4  # rosinality's make_kernel([1,3,3,1]) × up-factor²
    sd, noises = {}, []

    def styled(dst, layer):
        sd[f"{dst}.conv.weight"] = layer.weight[None]
        if layer.up > 1:
            sd[f"{dst}.conv.blur.kernel"] = blur
        sd[f"{dst}.conv.modulation.weight"] = layer.affine.weight
        sd[f"{dst}.conv.modulation.bias"] = layer.affine.bias
        sd[f"{dst}.noise.weight"] = layer.noise_strength.reshape(1) if layer.use_noise else torch.zeros([1])
        sd[f"{dst}.activate.bias"] = layer.bias
        res = layer.resolution
        noises.append((layer.noise_const if layer.use_noise else torch.zeros([res, res]))[None, None])

    def to_rgb(dst, layer, up):
        sd[f"{dst}.bias"] = layer.bias.reshape(1, -1, 1, 1)
        if up:
            sd[f"{dst}.upsample.kernel"] = blur
        sd[f"{dst}.conv.weight"] = layer.weight[None]
        sd[f"{dst}.conv.modulation.weight"] = layer.affine.weight
        sd[f"{dst}.conv.modulation.bias"] = layer.affine.bias

    for i in range(arch["num_layers"]):
        fc = getattr(mapping, f"fc{i}")
        sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"] = fc.weight, fc.bias  # style.0 is the PixelNorm
    sd["input.input"] = synthesis.b4.const[None]
    styled("conv1", synthesis.b4.conv1)
    to_rgb("to_rgb1", synthesis.b4.torgb, up=False)
    blocks = [getattr(synthesis, f"b{r}") for r in synthesis.block_resolutions[1:]]
    for k, block in enumerate(blocks):  # rosinality registers all convs, then all ToRGBs, then the noises
        styled(f"convs.{2 * k}", block.conv0)
        styled(f"convs.{2 * k + 1}", block.conv1)
    for k, block in enumerate(blocks):
        to_rgb(f"to_rgbs.{k}", block.torgb, up=True)
    sd.update({f"noises.noise_{i}": noise for i, noise in enumerate(noises)})
    args = dict(size=arch["img_resolution"], latent=arch["w_dim"], n_mlp=arch["num_layers"])
    args.update(lr_mlp=arch["lr_multiplier"], channels=arch["channels"])
    multiplier = rosinality_channel_multiplier(arch["channels"])
    if multiplier is not None:
        args["channel_multiplier"] = multiplier
    g_ema = {k: _exported(v) for k, v in sd.items()}
    data = {"g_ema": g_ema, "latent_avg": _exported(mapping.w_avg), "args": args}
    return _with_img_bias(data, synthesis, f"to_rgbs.{len(blocks) - 1}.bias" if blocks else "to_rgb1.bias", "g_ema")


def nvlabs_channel_rule(channels: dict[int, int]) -> tuple[int, int] | None:
    """(channel_base, channel_max) with min(channel_base // r, channel_max) == channels[r] at every resolution r,
    NVlabs' only way to set channels, or None where none gives them."""
    channel_max = max(channels.values())  # a larger max caps nothing more: the largest count is the max
    below = [r for r in sorted(channels) if channels[r] < channel_max]
    # channel_base // r falls with r, so the first resolution under the max pins channel_base to [c·r, c·r + r)
    # (with none under it, any channel_base >= max·r at the last one); the round c·r is NVlabs' kind of value.
    r = below[0] if below else max(channels)
    for channel_base in range(channels[r] * r, (channels[r] + 1) * r):
        if {r: min(channel_base // r, channel_max) for r in channels} == channels:
            return channel_base, channel_max
    return None


def export_nvlabs_state_dict(G, source="generator") -> dict:
    """{"state_dict", "init_kwargs"}: `G` as NVlabs stylegan2-ada-pytorch's `training.networks.Generator`
    (`Generator(**init_kwargs).load_state_dict(state_dict)` fits, its persistent resample filters included);
    what import_nvlabs reads back. Without noise inputs (use_noise=False) the noise strengths and buffers are
    zeros: the same images, in NVlabs' default layer. Refused: channels that no channel_base / channel_max give."""
    mapping, synthesis, arch = _exportable(G, source)
    rule = nvlabs_channel_rule(arch["channels"])
    if rule is None:
        raise ValueError(
            f"{source}: its generator's channels {arch['channels']} follow no min(channel_base // r, channel_max), "
            "the only way NVlabs' Generator sets them; export format=rosinality instead"
        )
    f = kernels.setup_filter(RESAMPLE_FILTER)
    state = {}  # in NVlabs' order (a module's parameters, its buffers, then its children), as its state_dict has it

    def synthesis_layer(dst, src):
        res = src.resolution
        state[f"{dst}.weight"] = src.weight
        state[f"{dst}.noise_strength"] = src.noise_strength if src.use_noise else torch.zeros([])
        state[f"{dst}.bias"] = src.bias
        state[f"{dst}.resample_filter"] = f  # NVlabs' layer keeps one (persistent) even where up=1
        state[f"{dst}.noise_const"] = src.noise_const if src.use_noise else torch.zeros([res, res])
        state[f"{dst}.affine.weight"], state[f"{dst}.affine.bias"] = src.affine.weight, src.affine.bias

    for res in synthesis.block_resolutions:
        b, block = f"synthesis.b{res}", getattr(synthesis, f"b{res}")
        if res == 4:
            state[f"{b}.const"] = block.const
        state[f"{b}.resample_filter"] = f
        for name in ("conv0", "conv1") if res > 4 else ("conv1",):
            synthesis_layer(f"{b}.{name}", getattr(block, name))
        rgb = block.torgb
        state[f"{b}.torgb.weight"], state[f"{b}.torgb.bias"] = rgb.weight, rgb.bias
        state[f"{b}.torgb.affine.weight"], state[f"{b}.torgb.affine.bias"] = rgb.affine.weight, rgb.affine.bias
    state["mapping.w_avg"] = mapping.w_avg
    for i in range(arch["num_layers"]):
        fc = getattr(mapping, f"fc{i}")
        state[f"mapping.fc{i}.weight"], state[f"mapping.fc{i}.bias"] = fc.weight, fc.bias
    init_kwargs = dict(
        z_dim=arch["z_dim"],
        c_dim=0,
        w_dim=arch["w_dim"],
        img_resolution=arch["img_resolution"],
        img_channels=arch["img_channels"],
        mapping_kwargs=dict(
            num_layers=arch["num_layers"], lr_multiplier=arch["lr_multiplier"], w_avg_beta=arch["w_avg_beta"]
        ),
        synthesis_kwargs=dict(
            channel_base=rule[0], channel_max=rule[1], conv_clamp=arch["conv_clamp"], architecture="skip"
        ),
    )
    data = {"state_dict": {k: _exported(v) for k, v in state.items()}, "init_kwargs": init_kwargs}
    return _with_img_bias(data, synthesis, f"synthesis.b{synthesis.img_resolution}.torgb.bias", "state_dict")


def export_nvlabs_discriminator(D, source="discriminator") -> dict:
    """{"state_dict", "init_kwargs"}: our Discriminator without its identity head as NVlabs stylegan2-ada-pytorch's
    `training.networks.Discriminator` ('resnet', unconditional): `Discriminator(**init_kwargs).load_state_dict(
    state_dict)` fits, its persistent resample filters included."""
    channels = {r: getattr(D, f"b{r}").conv0.weight.shape[0] for r in D.block_resolutions}
    channels[4] = D.b4.conv.weight.shape[0]
    rule = nvlabs_channel_rule(channels)
    if rule is None:
        raise ValueError(f"{source}: its channels {channels} follow no min(channel_base // r, channel_max)")
    f = kernels.setup_filter(RESAMPLE_FILTER)
    state = {}
    for name, tensor in D.state_dict().items():
        if name.startswith("classifier."):
            continue
        state[name] = tensor
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and layer.split(".")[-1] in ("fromrgb", "conv0", "conv1", "skip", "conv"):
            state[f"{layer}.resample_filter"] = f  # every NVlabs Conv2dLayer keeps one (persistent)
    for res in D.block_resolutions:
        state[f"b{res}.resample_filter"] = f
    init_kwargs = dict(
        c_dim=0,
        img_resolution=D.img_resolution,
        img_channels=D.img_channels,
        architecture="resnet",
        channel_base=rule[0],
        channel_max=rule[1],
        conv_clamp=D.b4.conv.conv_clamp,
        num_fp16_res=D.num_fp16_res,
        epilogue_kwargs=dict(mbstd_group_size=D.b4.mbstd.group_size, mbstd_num_channels=1),
    )
    return {"state_dict": {k: _exported(v) for k, v in state.items()}, "init_kwargs": init_kwargs}


def export_face_prior(G, D, source="face prior", training: dict | None = None) -> dict:
    """The face prior as one file in NVlabs' state-dict layout: G as `export_nvlabs_state_dict` writes it, its D
    under "discriminator" (`export_nvlabs_discriminator`), and `training` (kimg, seconds, curve rows: plain
    data, which public loaders ignore) under "training"; `load_pretrained` reads G and D."""
    out = {**export_nvlabs_state_dict(G, source), "discriminator": export_nvlabs_discriminator(D, source)}
    return {**out, "training": training} if training is not None else out
