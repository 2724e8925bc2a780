"""Audio encoder weight files: stage 1's encoder.pt (EncoderPretrain), a .ckpt that holds an encoder, and the
safetensors file an encoder is shared as (a voice prior shipped with the package among them), which carries the
encoder's config and feature size in its metadata. All are read as data: nothing in them is executed."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from lightning_modules import weights
from lightning_modules.io.safe_load import load_data, read_safetensors

FORMAT = "voice2face.audio_encoder"  # the safetensors metadata's `format`
HEAD = "classifier."  # AudioEncoder's speaker head: the classes of the corpus it learnt, no one else's


def is_safetensors(path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and then the JSON header."""
    with open(path, "rb") as f:
        start = f.read(9)
    return len(start) == 9 and start[8:9] == b"{"


def read_encoder_state(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(the encoder's state dict, about: encoder_config and feature_dim where the file records them) of an encoder
    file in any of the formats above; `path` may name a shipped file (checked against its SHA-256)."""
    path = os.fspath(weights.resolve(path))
    if is_safetensors(path):
        state, meta = read_safetensors(path, "cannot be read as safetensors")
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path}: a safetensors file, but not an audio encoder (metadata format {meta.get('format')!r})"
            )
        try:
            return state, {
                "encoder_config": json.loads(meta["encoder_config"]),
                "feature_dim": int(meta["feature_dim"]),
            }
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: an audio encoder file whose metadata lacks or garbles {err}") from err
    ckpt = load_data(path, "an encoder file (encoder.pt, encoder.safetensors or a .ckpt holding an encoder)")
    if isinstance(ckpt, dict) and "encoder" in ckpt:
        return ckpt["encoder"], {k: ckpt[k] for k in ("encoder_config", "feature_dim") if k in ckpt}
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}, {}
    raise ValueError(f"{path}: not an encoder checkpoint (expected an 'encoder' or 'state_dict' entry)")


def write_encoder_safetensors(path, state: dict[str, torch.Tensor], encoder_config: dict, feature_dim: int) -> None:
    """The encoder's weights without its speaker head (floats as float32), with the config that builds it."""
    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
        if not k.startswith(HEAD)
    }
    meta = {
        "format": FORMAT,
        "encoder_config": json.dumps(encoder_config, sort_keys=True),
        "feature_dim": str(feature_dim),
    }
    save_file(tensors, os.fspath(path), metadata=meta)
