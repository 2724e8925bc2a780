"""The speakers' projected W+ (experiments.project's identity_<name>.npy) that `model.latent_weight` pulls the voice's
ws toward: read with their .npy headers checked before the data, and only those the folder's manifest lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def read_latent_targets(folder: Path, names: list[str], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [len(names), *shape], mask [len(names)]: which identity has one) from `folder`/identity_<name>.npy."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model.latent_targets must be a folder written by experiments.project")
    listed = _projected_identities(folder)  # None: a folder made by hand, read by file name
    targets, mask = torch.zeros([len(names), *shape]), torch.zeros(len(names), dtype=torch.bool)
    for i, name in enumerate(names):
        path = folder / f"identity_{name}.npy"
        if path.is_file() and (listed is None or name in listed):
            targets[i], mask[i] = _read_w(path, shape), True
    if not mask.any():
        raise FileNotFoundError(f"{folder}: no identity_<name>.npy for any of the {len(names)} training identities")
    return targets, mask


def _projected_identities(folder: Path) -> set[str] | None:
    """The identities the manifest of an experiments.project folder lists: an `identity_<id>.npy` of an earlier
    projection into the folder (overwrite=true keeps other runs' files) is not this projection's."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        identities = json.loads(manifest.read_text())["identities"]
        assert isinstance(identities, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{manifest}: not the manifest experiments.project writes (no 'identities' object)") from None
    return set(identities)


def _read_w(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """One projected W+ [num_ws, w_dim], its .npy header checked before the data is read (a header may claim any
    size), its values finite (a NaN target made every G step a skipped one)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            found, _, dtype = read_header(f)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a .npy array ({err})") from None
    if tuple(found) != shape or dtype.kind != "f":
        raise ValueError(f"{path}: a W+ of shape {list(found)} ({dtype}), but this G takes {list(shape)} floats")
    w = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if not torch.isfinite(w).all():
        raise ValueError(f"{path}: its W+ holds NaN or infinity; project that identity again")
    return w
