"""Weights written by other code: the state-dict check every loader of ours shares, and importers of the two
public StyleGAN2 checkpoint formats (rosinality/stylegan2-pytorch, NVlabs stylegan2-ada-pytorch) into our
`Generator`. Both formats are read as data only: no code of theirs is imported or run.
"""

import argparse
import collections
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import torch
from torch import nn

import kernels
from lightning_modules import weights
from lightning_modules.build import check_network_config
from lightning_modules.latent import unconditional
from lightning_modules.model_folder import read_model_folder
from lightning_modules.safe_load import load_data, refuse_unreadable
from lightning_modules.stylegan2 import RESAMPLE_FILTER, Generator, channels_per_resolution

SHOWN = 5  # keys named per kind of mismatch; the counts say how many there are in all


def _shape(value):
    return list(value.shape) if hasattr(value, "shape") else type(value).__name__


def compare_state_dict(expected: dict[str, torch.Tensor] | nn.Module, found: dict, what: str, fix: str = "") -> None:
    """Raise a ValueError unless `found` holds exactly the tensors of `expected` (a module or its state dict),
    each of the same shape. The error starts with `what` (the file and what it should have fit) and names a few
    missing, unexpected and other-shaped keys; `fix` (how to get a file that fits) ends it."""
    own = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    reshaped = [
        f"{k} {_shape(found[k])} (expected {_shape(own[k])})"
        for k in sorted(set(own) & set(found))
        if _shape(found[k]) != _shape(own[k])
    ]
    problems = [
        f"{len(keys)} {kind} {keys[:SHOWN]}"
        for kind, keys in (("missing weights", missing), ("unexpected", unexpected), ("of other shapes", reshaped))
        if keys
    ]
    if problems:
        raise ValueError(f"{what}: {', '.join(problems)}" + (f"; {fix}" if fix else ""))


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

    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    num_blocks = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    img_resolution = 2 ** (num_blocks + 2)
    args = src.get("args")  # rosinality's train.py saves an argparse.Namespace, our exports a dict
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    sizes = {"style.1.weight": 2, "conv1.conv.weight": 5}
    sizes.update({f"convs.{2 * k}.conv.weight": 5 for k in range(num_blocks)})
    for key, ndim in sizes.items():  # the tensors the sizes are read from, before anything is built
        if key not in sd:
            raise ValueError(f"{source}: rosinality generator tensor {key!r} is missing")
        if not isinstance(sd[key], torch.Tensor) or sd[key].ndim != ndim:
            raise ValueError(f"{source}: {key} is {_shape(sd[key])}, not {ndim}-d as rosinality writes it")
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
    state = _restore_img_bias(state, src, source)

    G = _build_generator(
        source,
        impl,
        z_dim=style_dim,
        w_dim=style_dim,
        img_resolution=img_resolution,
        mapping_layers=n_mlp,
        channels=channels,
        mapping_lr_multiplier=args.get("lr_mlp", 0.01),
        img_bias="synthesis.img_bias" in state,
    )
    _load_generator(G, state, source)
    latent_avg = src.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != style_dim:
            raise ValueError(f"{source}: latent_avg is {_shape(latent_avg)}, expected a mean w [{style_dim}]")
        G.mapping.w_avg.copy_(latent_avg.reshape(-1))
    elif w_avg_samples:
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
    # torch's own `_load_from_bytes` unpickles without restriction; weights_only=True reads tensors only. The
    # bytes are torch.save's legacy (pre-zip) format, which torch 1.7-1.13 and 2.x write alike for a storage.
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a storage's bytes are a {type(data).__name__}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch's reader asserts and raises RuntimeError on a damaged record
        why = f"{type(err).__name__}: {err}"[:200]
        raise pickle.UnpicklingError(f"a storage's bytes are no torch storage ({why})") from None


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    # Pickled backward hooks and metadata are dropped: only the storage view is rebuilt, once it is known to lie
    # inside its storage (a view of 1e5 x 1e5 on four floats, or a negative stride, is no tensor of a network).
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}")
    view = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if view is None or len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in view):
        raise pickle.UnpicklingError(f"a tensor's view is not sizes and strides of non-negative integers: {size}")
    last = storage_offset + sum((n - 1) * step for n, step in zip(size, stride)) if all(size) else -1
    length = storage._size() if isinstance(storage, torch.TypedStorage) else storage.size()  # _size: no warning
    if last >= length:
        raise pickle.UnpicklingError(f"a tensor of size {list(size)} reaches past its storage of {length}")
    hooks = collections.OrderedDict()
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, hooks)


def _rebuild_parameter(data, *_):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter's data is a {type(data).__name__}")
    return data  # a Parameter's tensor is all an importer needs


class _NumpyDtype:
    """numpy's pickled `dtype(name, align, copy)` of a number type (bool, integer, float, complex: the kinds of
    NVlabs' layer attributes such as `weight_gain`). Objects, strings, records and subarrays are refused: they
    are where a numpy pickle could carry more than a number."""

    def __init__(self, name, align=False, copy=True):
        try:
            self.dtype = np.dtype(name) if isinstance(name, str) else None
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind not in "biufc":
            raise pickle.UnpicklingError(f"refusing numpy dtype {name!r}: only number dtypes are read")

    def __setstate__(self, state):
        # numpy's state: (version, byte order, subarray, names, fields, itemsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("refusing a numpy dtype with fields or a subarray")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data):
    """A pickled numpy number as the Python number it holds (NVlabs' layers keep e.g. `act_gain` as one)."""
    if not isinstance(dtype, _NumpyDtype):
        raise pickle.UnpicklingError(f"refusing a numpy scalar of {type(dtype).__name__} (not a number dtype)")
    if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dtype.dtype} scalar holds {type(data).__name__}, not its bytes")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


_ALLOWED = {
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x's name
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x's (public pickles of 2020-2021)
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
            f"refusing to load global {module}.{name}: the NVlabs importer only reads tensors and constructor arguments"
        )


MAX_MODULES, MAX_DEPTH = 100_000, 64  # a StyleGAN2 at 1024 px holds ~200 modules, 5 deep


def _module_state(obj, prefix, out, visits=None, depth=0):
    """Collect parameters and persistent buffers of a pickled module tree into a flat state dict. A module shared
    by several parents is read under each path, as torch's state_dict reads it, within a budget: a small file of
    modules that share their children would otherwise have 2^depth paths, and one that holds itself none."""
    visits = [0] if visits is None else visits
    visits[0] += 1
    if visits[0] > MAX_MODULES or depth > MAX_DEPTH:
        raise ValueError(
            f"its module tree has more than {MAX_MODULES} module paths or is deeper than {MAX_DEPTH} "
            f"(at {prefix.rstrip('.') or 'the network'}): shared or self-referencing modules, not a generator"
        )
    state = obj.state if isinstance(obj, _Opaque) else None
    if not isinstance(state, dict):
        raise ValueError(f"{prefix or 'G_ema'} is not a pickled torch module")
    non_persistent = state.get("_non_persistent_buffers_set", set()) or set()
    parts = {kind: state.get(kind) or {} for kind in ("_parameters", "_buffers", "_modules")}
    for kind, part in parts.items():
        if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
            raise ValueError(f"{prefix or 'G_ema'}: its {kind} is a {type(part).__name__}, not a dict of names")
    for kind in ("_parameters", "_buffers"):
        for key, tensor in parts[kind].items():
            if tensor is not None and not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{prefix}{key} is a {type(tensor).__name__}, not a tensor")
            if tensor is not None and key not in non_persistent:
                out[prefix + key] = tensor
    for key, child in parts["_modules"].items():
        if child is not None:
            _module_state(child, f"{prefix}{key}.", out, visits, depth + 1)
    return out


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
    if not isinstance(data.get("G_ema", data.get("G")), _Persistent):
        raise ValueError(f"{source}: expected an NVlabs pickle with a 'G_ema' (or 'G') network")
    net = data.get("G_ema", data.get("G"))
    if net.class_name != "Generator":
        raise ValueError(f"{source}: the network is a {net.class_name!r}, not an NVlabs Generator")
    try:
        state = _module_state(net, "", {})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return _generator_from_nvlabs(state, net.state.get("_init_kwargs", {}), source, impl)


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
    data = _unpickle_nvlabs_dict(path)
    try:
        return (_generator_from_pickle(data, path, impl), *_pickle_trunk(data, path))
    except (TypeError, AttributeError, KeyError, IndexError, RuntimeError) as err:
        # data of other shapes than NVlabs' own, e.g. a storage where kwargs belong ("can't index a TypedStorage")
        raise ValueError(f"{path}: not an NVlabs network pickle ({type(err).__name__}: {err})"[:300]) from None


def _generator_from_checkpoint(data, path, impl):
    """G_ema of a voice2face checkpoint, built from the generator config its hyper-parameters store."""
    cfg = data["hyper_parameters"].get("generator")
    check_network_config(cfg, f"{path}: model.generator")
    if cfg["_target_"] != "lightning_modules.stylegan2.Generator":
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
    if not isinstance(net, _Persistent):
        return {}, None
    if net.class_name != "Discriminator":
        raise ValueError(f"{path}: its 'D' is a {net.class_name!r}, not an NVlabs Discriminator")
    try:
        state = _module_state(net, "", {})
    except ValueError as err:
        raise ValueError(f"{path}: its D: {err}") from None
    return _nvlabs_trunk(dict(net.state.get("_init_kwargs", {})), state, path)


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
    if cfg["_target_"] != "lightning_modules.stylegan2.Discriminator":
        return {}, None  # the run builds its own
    state = {k: v for k, v in _prefixed(data["state_dict"], "D.").items() if not k.startswith("classifier.")}
    if not state:
        return {}, None  # a model folder keeps no D
    return {k: v for k, v in cfg.items() if k not in ("_target_", "img_resolution", "num_classes")}, state


MAX_OPCODES, MAX_MARKS = 10_000_000, 1_000  # NVlabs' 1024 px G + D + G_ema: ~10^5 opcodes, a few marks open


def _check_opcodes(raw: bytes) -> None:
    """Walk the pickle's opcodes before it is unpickled (pickletools, which reads arguments and builds nothing):
    every declared length must lie inside the file, so no opcode allocates more than the file holds (the
    unpickler sizes its buffer before it reads), and the opcodes and open marks stay within a budget."""
    marks = 0
    for count, (op, _, _) in enumerate(pickletools.genops(raw)):
        if count > MAX_OPCODES:
            raise pickle.UnpicklingError(f"more than {MAX_OPCODES} opcodes")
        if op.name == "MARK":
            marks += 1
            if marks > MAX_MARKS:
                raise pickle.UnpicklingError(f"more than {MAX_MARKS} nested marks")
        elif pickletools.markobject in op.stack_before:
            marks -= 1


def _unpickle_nvlabs_dict(path):
    try:
        raw = Path(path).read_bytes()
        _check_opcodes(raw)
        data = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a loadable NVlabs network pickle: {first_line}") from None
    except (
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        OverflowError,
        MemoryError,
        RuntimeError,
    ) as err:
        # a damaged stream reaches the unpickler's own checks, calls an allowed function with wrong arguments, or
        # sets items of a torch object (SETITEM on a storage: "can't index a TypedStorage with str")
        first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(f"{path}: not a loadable NVlabs network pickle ({type(err).__name__}: {first_line})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an NVlabs network pickle (a dict of networks)")
    return data


# ----------------------------------------------------------------------------------------------------
# Exporters, the importers' inverses: a G for the public code's own loaders (experiments.export).
# ----------------------------------------------------------------------------------------------------


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
IMG_BIAS_KEY, TORGB_BIAS_KEY = "voice2face_img_bias", "voice2face_torgb_bias"


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


def rosinality_channel_multiplier(channels: dict[int, int]) -> int | None:
    """The `channel_multiplier` m with which rosinality's fixed table (512 up to 32 px, then 256·m at 64 px
    halving per resolution to 16·m at 1024 px) gives `channels`, or None where no m does."""
    if max(channels) > 1024:
        return None  # the table stops at 1024 px
    m = channels[64] // 256 if 64 in channels else 2  # below 64 px every m gives 512: rosinality's default
    table = {r: 512 if r <= 32 else 16384 * m // r for r in channels}
    return m if m >= 1 and table == channels else None


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
    for bad, feature in (
        (arch["conv_clamp"] is not None, f"conv_clamp={arch['conv_clamp']} (rosinality's convs never clamp)"),
        (arch["img_channels"] != 3, f"img_channels={arch['img_channels']} (rosinality's ToRGB writes 3)"),
        (arch["z_dim"] != arch["w_dim"], f"z_dim={arch['z_dim']} != w_dim={arch['w_dim']} (its z is w_dim wide)"),
    ):
        if bad:
            raise ValueError(f"{source}: its generator has {feature}, which rosinality cannot express")
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
