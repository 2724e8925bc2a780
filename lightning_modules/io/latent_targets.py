"""The speakers' projected W+ that `model.latent_weight` pulls the voice's ws toward: a safetensors file of
experiments.latent_targets (one tensor per identity; a shipped name such as `face_prior_64_targets` too), or a
folder of experiments.project's identity_<name>.npy, read with their .npy headers checked before the data, and only
those the folder's manifest lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lightning_modules import weights


def read_latent_targets(source: str, names: list[str], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [len(names), *shape], mask [len(names)]: which identity has one) from `source`: a shipped name, a
    safetensors file or a folder of identity_<name>.npy."""
    path = weights.resolve(source)  # a shipped name is checked against its SHA-256
    if path.is_file():
        return _read_safetensors(path, names, shape)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: model.latent_targets must be a safetensors file of experiments.latent_targets, a folder of "
            "experiments.project or a shipped name"
        )
    return _read_folder(path, names, shape)


def layer_mean_share(targets: torch.Tensor, mask: torch.Tensor) -> float:
    """The share of the between-speaker variance of W+ targets [I, num_ws, w_dim] (rows where `mask`) that their
    mean over the layers keeps: what a voice with one w for every layer (model.latent_space=w) can be pulled
    toward. 1.0 for targets projected in W (one w repeated over the layers)."""
    held = targets[mask].double()
    spread = (held - held.mean(0)).square().sum(-1).mean()
    means = held.mean(1)
    return float((means - means.mean(0)).square().sum(-1).mean() / spread.clamp_min(1e-12))


def _read_safetensors(path: Path, names: list[str], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    targets, mask = torch.zeros([len(names), *shape]), torch.zeros(len(names), dtype=torch.bool)
    try:
        with safe_open(str(path), framework="pt") as f:
            held = set(f.keys())
            for i, name in enumerate(names):
                if name in held:
                    found = f.get_slice(name).get_shape()  # checked before the data is read
                    if tuple(found) != shape:
                        raise ValueError(f"{path}: {name}'s W+ has shape {list(found)}, but this G takes {list(shape)}")
                    targets[i], mask[i] = _finite(f.get_tensor(name).float(), f"{path}: {name}"), True
    except SafetensorError as err:
        raise ValueError(f"{path}: not a safetensors file of latent targets ({err})") from None
    if not mask.any():
        raise ValueError(f"{path}: holds no target for any of the {len(names)} training identities")
    return targets, mask


def _read_folder(folder: Path, names: list[str], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
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
    size), its values finite."""
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
    return _finite(torch.from_numpy(np.load(path, allow_pickle=False)).float(), str(path))


def _finite(w: torch.Tensor, where: str) -> torch.Tensor:
    """`w`, unless it holds NaN or infinity (a NaN target made every G step a skipped one)."""
    if not torch.isfinite(w).all():
        raise ValueError(f"{where}: its W+ holds NaN or infinity; project that identity again")
    return w
