"""Open a file a user hands us as data only: tensors and plain containers, never pickled code."""

from __future__ import annotations

import os

import torch

from datamodules.files import unreadable_reason


def read_safetensors(path, unreadable: str, fix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata) of a safetensors file; ValueError `<path>: <unreadable> (<error>)[; <fix>]` where
    it cannot be read (cut, not safetensors, missing). The format holds no code: nothing in it runs."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{os.fspath(path)}: {unreadable} ({err})" + (f"; {fix}" if fix else "")) from None


def load_data(path, what: str, map_location="cpu", fix: str = ""):
    """torch.load(weights_only=True) of `path`; ValueError naming the file, `what` it should have been and `fix`
    (what to do instead), if given. Explicit weights_only=True also holds under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    try:
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickled objects, not a torch file: all mean "not this file"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(
            f"{os.fspath(path)}: cannot be read as {what} ({type(err).__name__}: {first}); it may be "
            "truncated, from another program, or hold pickled objects (never loaded: they can run "
            "code)" + (f"; {fix}" if fix else "")
        ) from err


def refuse_unreadable(path, not_found: str, fix: str) -> None:
    """FileNotFoundError(`not_found`) when nothing is at `path`; ValueError naming what else is there (a folder, a
    FIFO, a symlink loop, an unreadable file: all were "not found") and `fix`."""
    reason = unreadable_reason(path)
    if reason == "no such file":
        raise FileNotFoundError(not_found)
    if reason:
        raise ValueError(f"{os.fspath(path)}: {reason}; {fix}")


def check_backed(tensors: dict, path) -> None:
    """ValueError naming `path` and the tensor where a tensor claims more elements than its storage holds (a zero or
    overlapping stride: a few bytes on disk can claim gigabytes, which building a network from its shape would
    allocate). Networks save dense tensors, so no real file is refused."""
    for key, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise ValueError(
                f"{os.fspath(path)}: tensor {key!r} of shape {list(t.shape)} is a view claiming "
                f"{t.numel() * t.element_size():,} bytes over a storage of {t.untyped_storage().nbytes():,} "
                "(zero or overlapping strides); not a saved network"
            )
