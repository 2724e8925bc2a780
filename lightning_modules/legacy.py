"""Weights written by other code: the state-dict check every loader of ours shares, and importers of the two
public StyleGAN2 checkpoint formats (rosinality/stylegan2-pytorch, NVlabs stylegan2-ada-pytorch) into our
`Generator`. Both formats are read as data only: no code of theirs is imported or run.
"""

import argparse
import collections
import io
import pickle
from pathlib import Path

import torch
from torch import nn

import kernels
from lightning_modules.stylegan2 import RESAMPLE_FILTER, Generator

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
            f"refusing to load global {module}.{name}: the NVlabs importer only reads tensors and constructor arguments"
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
        raise ValueError(f"{source}: class-conditional NVlabs generators (c_dim={kw['c_dim']}) are not supported")
    if synthesis_kwargs.get("architecture", "skip") != "skip":
        raise ValueError(
            f"{source}: only the 'skip' synthesis architecture is supported, got {synthesis_kwargs['architecture']!r}"
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
