"""Weights written by other code: importers of the two public StyleGAN2 checkpoint formats
(rosinality/stylegan2-pytorch, NVlabs stylegan2-ada-pytorch) into our `Generator`. Both formats are read as data
only: no code of theirs is imported or run.
"""

import argparse
from pathlib import Path

import torch

import kernels
from lightning_modules import weights
from lightning_modules.io.build import check_network_config
from lightning_modules.io.model_folder import read_model_folder
from lightning_modules.io.nvlabs_pickle import Persistent, module_state, unpickle_nvlabs
from lightning_modules.io.safe_load import load_data, refuse_unreadable
from lightning_modules.io.state_dict import SHOWN, compare_state_dict, shape_of
from lightning_modules.nets.stylegan2 import RESAMPLE_FILTER, Generator, channels_per_resolution

# ----------------------------------------------------------------------------------------------------
# Importers of the public checkpoint formats.
# ----------------------------------------------------------------------------------------------------


def _load_generator(G, state, source):
    compare_state_dict(G, state, f"{source}: the checkpoint does not match a Generator")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} weight tensor(s) hold NaN or infinity {bad[:SHOWN]}: the file is damaged or its "
            "training diverged; use an earlier snapshot"
        )
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return G


def _check_filter(tensor, source, key):
    expected = kernels.setup_filter(RESAMPLE_FILTER)
    t = tensor.to(torch.float32)
    if t.shape != expected.shape or not torch.allclose(t / t.sum(), expected, atol=1e-6):
        raise ValueError(f"{source}: {key} is not the [1,3,3,1] resampling filter this Generator uses")


MAX_GENERATOR_PARAMS = 1 << 28  # 268 M parameters (1 GiB in float32); NVlabs' 1024 px config-f G holds 30 M


def _build_generator(source, impl, **kw):
    """The Generator a handed file describes, after every argument is checked for type and range and the size it
    implies is within MAX_GENERATOR_PARAMS, before anything is allocated: a field of another type (a string, a
    list, a bool), a negative or absurd number (w_dim 30000 in a 145 KB file meant 4.4 GB) is named with the file."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}; the file is damaged or not a StyleGAN2 generator of this kind")

    def integer(name, low, high):
        value = kw.get(name)
        if type(value) is not int or not low <= value <= high:
            raise bad(f"{name} is {value!r}, not an integer in {low}..{high}")
        return value

    res = integer("img_resolution", 4, 4096)
    if res & (res - 1):
        raise bad(f"img_resolution is {res}, not a power of 2")
    channels_out = kw.get("img_channels", 3)
    if type(channels_out) is not int or channels_out != 3:
        raise bad(f"img_channels is {channels_out!r}: only RGB generators (3 channels) draw faces here")
    z_dim, w_dim, layers = integer("z_dim", 1, 4096), integer("w_dim", 1, 4096), integer("mapping_layers", 1, 32)
    channels = kw.get("channels")
    if channels is None:
        base, top = integer("channel_base", 1, 1 << 24), integer("channel_max", 1, 4096)
        channels = channels_per_resolution(res, base, top)
    wanted = [2**i for i in range(2, res.bit_length())]
    given = list(channels) if isinstance(channels, dict) else channels
    if not isinstance(channels, dict) or not all(type(r) is int for r in given) or sorted(given) != wanted:
        raise bad(f"channels are given for {given!r}, not for the resolutions {wanted}")
    if not all(type(c) is int and 1 <= c <= 4096 for c in channels.values()):
        raise bad(f"channels {channels} are not integers in 1..4096")
    for name, low, high in (("mapping_lr_multiplier", 0.0, 100.0), ("w_avg_beta", 0.0, 1.0)):
        if name not in kw:
            continue  # the Generator's own default
        value = kw[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise bad(f"{name} is {value!r}, not a number in {low:g}..{high:g}")
    clamp = kw.get("conv_clamp")
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0 < clamp < 1e9):
        raise bad(f"conv_clamp is {clamp!r}, not None or a positive number")
    # weights: the mapping's layers, then per resolution two 3x3 convs with their style affines, and a ToRGB
    params = z_dim * w_dim + (layers - 1) * w_dim * w_dim
    previous = channels[4]
    for c in channels.values():
        params += 2 * (9 * previous * c + w_dim * previous) + (w_dim + 3) * c
        previous = c
    if params > MAX_GENERATOR_PARAMS:
        raise bad(
            f"its arguments describe {params / 1e6:.0f} M parameters ({4 * params / 2**30:.1f} GiB; w_dim {w_dim}, "
            f"channels up to {max(channels.values())}), more than the {MAX_GENERATOR_PARAMS / 1e6:.0f} M allowed"
        )
    return Generator(**{**kw, "impl": impl})


def import_rosinality(src, w_avg_samples=10000, impl="auto", source=None):
    """A Generator from a rosinality/stylegan2-pytorch checkpoint (path or loaded dict; `g_ema`, else `g`).

    Resolution, style dim, mapping depth and channels are read off the tensors, the mapping's lr multiplier off
    `args.lr_mlp` where the file has it (a constructor argument, 0.01 unless set). rosinality's training stores
    no mean w: `mapping.w_avg` is the file's `latent_avg` (pSp-style files, experiments.export) where it has one,
    else estimated from `w_avg_samples` z drawn with a fixed seed (0 = leave it at zero)."""
    source = source or (str(src) if isinstance(src, (str, Path)) else "rosinality checkpoint")
    if isinstance(src, (str, Path)):
        with torch.serialization.safe_globals([argparse.Namespace]):
            src = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(src, dict):
        raise ValueError(f"{source}: expected a dict, got {type(src).__name__}")
    sd = src.get("g_ema", src.get("g", src if "input.input" in src else None))
    if sd is None or "input.input" not in sd:
        raise ValueError(f"{source}: no rosinality generator state ('g_ema' or 'g' with 'input.input') found")
    n_mlp, num_blocks, style_dim, channels = _rosinality_sizes(sd, source)
    state = _restore_img_bias(_rosinality_state(sd, n_mlp, num_blocks, style_dim, source), src, source)
    args = src.get("args")  # rosinality's train.py saves an argparse.Namespace, our exports a dict
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    G = _build_generator(
        source,
        impl,
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=2 ** (num_blocks + 2),
        mapping_layers=n_mlp,
        channels=channels,
        mapping_lr_multiplier=args.get("lr_mlp", 0.01),
        img_bias="synthesis.img_bias" in state,
    )
    _load_generator(G, state, source)
    latent_avg = src.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != style_dim:
            raise ValueError(f"{source}: latent_avg is {shape_of(latent_avg)}, expected a mean w [{style_dim}]")
        G.mapping.w_avg.copy_(latent_avg.reshape(-1))
    elif w_avg_samples:
        z = torch.randn([w_avg_samples, style_dim], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(z)[:, 0].mean(dim=0))
    return G


def _rosinality_sizes(sd, source) -> tuple[int, int, int, dict[int, int]]:
    """(mapping layers, synthesis blocks above 4 px, style dim, channels per resolution) read off a rosinality
    generator's tensors, each checked to be there and of the rank rosinality writes before anything is built."""
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    num_blocks = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    sizes = {"style.1.weight": 2, "conv1.conv.weight": 5}
    sizes.update({f"convs.{2 * k}.conv.weight": 5 for k in range(num_blocks)})
    for key, ndim in sizes.items():
        if key not in sd:
            raise ValueError(f"{source}: rosinality generator tensor {key!r} is missing")
        if not isinstance(sd[key], torch.Tensor) or sd[key].ndim != ndim:
            raise ValueError(f"{source}: {key} is {shape_of(sd[key])}, not {ndim}-d as rosinality writes it")
    channels = {4: sd["conv1.conv.weight"].shape[1]}
    channels.update({2 ** (k + 3): sd[f"convs.{2 * k}.conv.weight"].shape[1] for k in range(num_blocks)})
    return n_mlp, num_blocks, sd["style.1.weight"].shape[1], channels


def _rosinality_styled(sd, dst, src_prefix, noise_key) -> dict:
    """One modulated conv layer of rosinality's (conv, its modulation, the activation's bias, noise) in our names."""
    return {
        f"{dst}.weight": sd[f"{src_prefix}.conv.weight"][0],
        f"{dst}.affine.weight": sd[f"{src_prefix}.conv.modulation.weight"],
        f"{dst}.affine.bias": sd[f"{src_prefix}.conv.modulation.bias"],
        f"{dst}.bias": sd[f"{src_prefix}.activate.bias"],
        f"{dst}.noise_strength": sd[f"{src_prefix}.noise.weight"].reshape([]),
        f"{dst}.noise_const": sd[f"noises.{noise_key}"][0, 0],
    }


def _rosinality_to_rgb(sd, dst, src_prefix) -> dict:
    return {
        f"{dst}.weight": sd[f"{src_prefix}.conv.weight"][0],
        f"{dst}.affine.weight": sd[f"{src_prefix}.conv.modulation.weight"],
        f"{dst}.affine.bias": sd[f"{src_prefix}.conv.modulation.bias"],
        f"{dst}.bias": sd[f"{src_prefix}.bias"].reshape(-1),
    }


def _rosinality_state(sd, n_mlp, num_blocks, style_dim, source) -> dict:
    """Our Generator's state dict from rosinality's tensors (w_avg zero: rosinality's training keeps none)."""
    try:
        for key in [k for k in sd if k.endswith("blur.kernel") or k.endswith("upsample.kernel")]:
            _check_filter(sd[key], source, key)
        state = {"mapping.w_avg": torch.zeros([style_dim]), "synthesis.b4.const": sd["input.input"][0]}
        for i in range(n_mlp):
            state[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
            state[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
        state.update(_rosinality_styled(sd, "synthesis.b4.conv1", "conv1", "noise_0"))
        state.update(_rosinality_to_rgb(sd, "synthesis.b4.torgb", "to_rgb1"))
        for k in range(num_blocks):
            b = f"synthesis.b{2 ** (k + 3)}"
            state.update(_rosinality_styled(sd, f"{b}.conv0", f"convs.{2 * k}", f"noise_{2 * k + 1}"))
            state.update(_rosinality_styled(sd, f"{b}.conv1", f"convs.{2 * k + 1}", f"noise_{2 * k + 2}"))
            state.update(_rosinality_to_rgb(sd, f"{b}.torgb", f"to_rgbs.{k}"))
    except KeyError as err:
        raise ValueError(f"{source}: rosinality generator tensor {err} is missing") from None
    return state


def _generator_from_nvlabs(state, init_kwargs, source, impl):
    kw = dict(init_kwargs)
    mapping_kwargs, synthesis_kwargs = (
        dict(kw.get("mapping_kwargs", {})),
        dict(kw.get("synthesis_kwargs", {})),
    )
    if kw.get("c_dim", 0):
        raise ValueError(f"{source}: class-conditional NVlabs generators (c_dim={kw['c_dim']}) are not supported")
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise ValueError(
            f"{source}: only the 'skip' synthesis architecture is supported, got {synthesis_kwargs['architecture']!r}"
        )
    missing = [k for k in ("z_dim", "w_dim", "img_resolution") if k not in kw]
    if missing:
        raise ValueError(f"{source}: init_kwargs lack {missing}")
    G = _build_generator(
        source,
        impl,
        z_dim=kw["z_dim"],
        w_dim=kw["w_dim"],
        img_resolution=kw["img_resolution"],
        img_channels=kw.get("img_channels", 3),
        mapping_layers=mapping_kwargs.get("num_layers", 8),
        channel_base=synthesis_kwargs.get("channel_base", 32768),
        channel_max=synthesis_kwargs.get("channel_max", 512),
        conv_clamp=synthesis_kwargs.get("conv_clamp"),
        mapping_lr_multiplier=mapping_kwargs.get("lr_multiplier", 0.01),
        w_avg_beta=mapping_kwargs.get("w_avg_beta", 0.995),
        img_bias="synthesis.img_bias" in state,
    )
    state = dict(state)
    for key in [k for k in state if k.endswith("resample_filter")]:
        _check_filter(state.pop(key), source, key)
    return _load_generator(G, state, source)


def import_nvlabs(src, impl="auto", source=None):
    """A Generator from an NVlabs stylegan2-ada-pytorch network pickle (`G_ema`), read without NVlabs' code by
    an unpickler that only rebuilds tensors and containers; or from a dict {"state_dict", "init_kwargs"}."""
    source = source or (str(src) if isinstance(src, (str, Path)) else "NVlabs generator dict")
    if isinstance(src, (str, Path)):
        return _read_nvlabs_pickle(src, impl)[0]
    if not isinstance(src, dict) or "state_dict" not in src or "init_kwargs" not in src:
        raise ValueError(f"{source}: expected a path or a dict with 'state_dict' and 'init_kwargs'")
    state = _restore_img_bias(dict(src["state_dict"]), src, source)
    return _generator_from_nvlabs(state, src["init_kwargs"], source, impl)


def _generator_from_pickle(data, source, impl):
    """The Generator of an unpickled NVlabs network pickle (`G_ema`, else `G`)."""
    if not isinstance(data.get("G_ema", data.get("G")), Persistent):
        raise ValueError(f"{source}: expected an NVlabs pickle with a 'G_ema' (or 'G') network")
    init_kwargs, state = _network_state(data.get("G_ema", data.get("G")), "Generator", f"{source}: the network")
    return _generator_from_nvlabs(state, init_kwargs, source, impl)


def _network_state(net: Persistent, class_name: str, where: str) -> tuple[dict, dict]:
    """(constructor arguments, state dict) of an unpickled NVlabs network that must be a `class_name`."""
    if net.class_name != class_name:
        raise ValueError(f"{where} is a {net.class_name!r}, not an NVlabs {class_name}")
    try:
        state = module_state(net, "", {})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return dict(net.state.get("_init_kwargs", {})), state


# ----------------------------------------------------------------------------------------------------
# One entry point for a generator file a user hands us (model.generator_init, the projector, export).
# ----------------------------------------------------------------------------------------------------

GENERATOR_FORMATS = (
    "an NVlabs network pickle (.pkl)",
    "a rosinality checkpoint (.pt with g_ema)",
    "an NVlabs state-dict export ({state_dict, init_kwargs}, experiments.export)",
    "a voice2face training checkpoint (.ckpt: its G_ema)",
    "a voice2face model folder (model.safetensors + config.json: its G_ema)",
)


def _prefixed(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _is_torch_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch.save's zip container; NVlabs pickles are plain pickle streams


def load_generator(path, impl="auto") -> Generator:
    """The Generator in `path`, any of GENERATOR_FORMATS (load_pretrained without the D)."""
    return load_pretrained(path, impl)[0]


def load_pretrained(path, impl="auto") -> tuple[Generator, dict, dict[str, torch.Tensor] | None]:
    """(G, Discriminator arguments, D weights) of a generator file, any of GENERATOR_FORMATS, read once and as
    data only (weights_only torch.load or the restricted unpickler). The format is told by the content, not the
    suffix; anything else is a ValueError naming the file and the formats it may be. The D part is that of
    our `Discriminator` without its identity head (its classes are a run's own), or ({}, None) where the file
    holds no D (rosinality's g_ema-only files, exports, a baseline's checkpoint). `path` may also name a file
    shipped with the package (lightning_modules.weights, e.g. face_prior_64), checked against its SHA-256."""
    path = weights.resolve(path)
    if Path(path).is_dir():
        data = read_model_folder(path)
        return (_generator_from_checkpoint(data, path, impl), *_checkpoint_trunk(data, path))
    formats = f"give one of: {'; '.join(GENERATOR_FORMATS)}"
    refuse_unreadable(path, f"{path}: generator file not found", formats)
    if not _is_torch_zip(path):
        try:
            return _read_nvlabs_pickle(path, impl)
        except ValueError as err:
            raise ValueError(f"{err}; a generator file is one of: {'; '.join(GENERATOR_FORMATS)}") from None
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = load_data(path, "a generator file", fix=formats)
    if isinstance(data, dict) and ("g_ema" in data or "g" in data or "input.input" in data):
        return import_rosinality(data, impl=impl, source=str(path)), {}, None
    if isinstance(data, dict) and "init_kwargs" in data and "state_dict" in data:
        D = data.get("discriminator")  # export_face_prior's D, beside its G
        trunk = _nvlabs_trunk(D["init_kwargs"], D["state_dict"], path) if isinstance(D, dict) else ({}, None)
        return import_nvlabs(data, impl=impl, source=str(path)), *trunk
    if isinstance(data, dict) and isinstance(data.get("hyper_parameters"), dict) and "state_dict" in data:
        return (_generator_from_checkpoint(data, path, impl), *_checkpoint_trunk(data, path))
    raise ValueError(f"{path}: not a generator file; {formats}")


def _read_nvlabs_pickle(path, impl):
    """(G, D arguments, D weights) of an NVlabs network pickle; whatever the file holds, a ValueError naming it."""
    data = unpickle_nvlabs(path)
    try:
        return (_generator_from_pickle(data, path, impl), *_pickle_trunk(data, path))
    except (TypeError, AttributeError, KeyError, IndexError, RuntimeError) as err:
        # data of other shapes than NVlabs' own, e.g. a storage where kwargs belong ("can't index a TypedStorage")
        raise ValueError(f"{path}: not an NVlabs network pickle ({type(err).__name__}: {err})"[:300]) from None


def _generator_from_checkpoint(data, path, impl):
    """G_ema of a voice2face checkpoint, built from the generator config its hyper-parameters store."""
    cfg = data["hyper_parameters"].get("generator")
    check_network_config(cfg, f"{path}: model.generator")
    if cfg["_target_"] != "lightning_modules.nets.stylegan2.Generator":
        raise ValueError(f"{path}: its generator is a {cfg['_target_']}, not a StyleGAN2 Generator")
    state = _prefixed(data["state_dict"], "G_ema.")
    if "mapping.prior.w_avg" in state:  # G under a W / W+ voice head (latent.VoiceLatent): its own mapping
        state = {_unhead(k): v for k, v in state.items() if k.startswith(("mapping.prior.", "synthesis."))}
    z_dim = state["mapping.fc0.weight"].shape[1] if "mapping.fc0.weight" in state else None
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    kwargs.update(z_dim=kwargs.get("z_dim", z_dim), img_resolution=data["hyper_parameters"].get("img_resolution"))
    if not state:
        raise ValueError(f"{path}: holds no G_ema weights (a checkpoint cut short, or not of a voice2face run)")
    G = _build_generator(f"{path} (G_ema)", impl, **{k: v for k, v in kwargs.items() if k != "impl"})
    return _load_generator(G, state, f"{path} (G_ema)")


def _unhead(key):
    return "mapping." + key[len("mapping.prior.") :] if key.startswith("mapping.prior.") else key


def _pickle_trunk(data, path):
    """NVlabs' resnet D of an unpickled network pickle as (arguments, weights) for ours: it names its layers as
    ours does; its filters are checked, not loaded."""
    net = data.get("D")
    if not isinstance(net, Persistent):
        return {}, None
    init_kwargs, state = _network_state(net, "Discriminator", f"{path}: its 'D'")
    return _nvlabs_trunk(init_kwargs, state, path)


def _nvlabs_trunk(kwargs, state, path):
    """(arguments, weights) of our Discriminator from NVlabs' Discriminator arguments and state dict. The file's
    num_fp16_res is not carried over: the run that trains the D chooses its precision (float32 unless set)."""
    if kwargs.get("architecture", "resnet") != "resnet" or kwargs.get("c_dim", 0):
        raise ValueError(f"{path}: only an unconditional 'resnet' NVlabs D can seed ours")
    state = dict(state)
    for key in [k for k in state if k.endswith("resample_filter")]:
        _check_filter(state.pop(key), path, key)
    epilogue = dict(kwargs.get("epilogue_kwargs", {}))
    if epilogue.get("mbstd_num_channels", 1) != 1:
        raise ValueError(f"{path}: its D has {epilogue['mbstd_num_channels']} minibatch-std channels; ours has 1")
    d_kwargs = {
        "channel_base": kwargs.get("channel_base", 32768),
        "channel_max": kwargs.get("channel_max", 512),
        "mbstd_group_size": epilogue.get("mbstd_group_size", 4),
        "conv_clamp": kwargs.get("conv_clamp"),
    }
    return d_kwargs, state


def _checkpoint_trunk(data, path):
    """The StyleGAN2 D of a voice2face checkpoint as (arguments, weights); ({}, None) for a baseline's D."""
    cfg = data["hyper_parameters"].get("discriminator")
    check_network_config(cfg, f"{path}: model.discriminator")
    if cfg["_target_"] != "lightning_modules.nets.stylegan2.Discriminator":
        return {}, None  # the run builds its own
    state = {k: v for k, v in _prefixed(data["state_dict"], "D.").items() if not k.startswith("classifier.")}
    if not state:
        return {}, None  # a model folder keeps no D
    return {k: v for k, v in cfg.items() if k not in ("_target_", "img_resolution", "num_classes")}, state


# The img_bias a from-scratch G carries has no place in either public format; an export keeps it beside the
# weights under these keys (exporters._with_img_bias), which the public loaders ignore and ours read back.
IMG_BIAS_KEY, TORGB_BIAS_KEY = "voice2face_img_bias", "voice2face_torgb_bias"


def _restore_img_bias(state, src, source):
    """`state` (our names) with the img_bias that a `_with_img_bias` export keeps beside it, and its top ToRGB
    bias unfolded; `state` as it is where the file has none."""
    if IMG_BIAS_KEY not in src:
        return state
    bias, top = src[IMG_BIAS_KEY], src.get(TORGB_BIAS_KEY)
    key = f"synthesis.b{bias.shape[-1]}.torgb.bias" if isinstance(bias, torch.Tensor) and bias.ndim == 3 else None
    if key not in state or not isinstance(top, torch.Tensor) or top.numel() != state[key].numel():
        raise ValueError(
            f"{source}: {IMG_BIAS_KEY} must be a [C, S, S] bias of an S px generator, with {TORGB_BIAS_KEY} "
            "(its top ToRGB bias) beside it"
        )
    return {**state, "synthesis.img_bias": bias, key: top.reshape(state[key].shape)}
