"""NVlabs network pickles read as data: a restricted unpickler that rebuilds only tensors, plain containers and
the numpy scalars NVlabs' layers keep, checked before it runs (every declared length inside the file, a budget of
opcodes and marks), and the walk from its opaque modules to a flat state dict. No code from the file runs."""

import collections
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import torch


class _Opaque(dict):
    """Stands in for any object of an NVlabs pickle: keeps its state, items and constructor arguments as data
    (a dict subclass so that pickled dict subclasses such as dnnlib.EasyDict fill it too)."""

    state = None

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class Persistent(_Opaque):
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
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Persistent,
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


def module_state(obj, prefix, out, visits=None, depth=0):
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
            module_state(child, f"{prefix}{key}.", out, visits, depth + 1)
    return out


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


def unpickle_nvlabs(path):
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
