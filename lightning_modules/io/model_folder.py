"""A trained voice model as a folder in huggingface_hub's layout, with no pickle in it: `model.safetensors` (the
networks generate needs), `config.json` (the hyper-parameters that rebuild them and the voice pipeline) and
`README.md` (the model card). A hub takes the folder as it is; nothing is uploaded or downloaded here.

`read_model_folder` gives the dict a training checkpoint gives (`read_checkpoint` reads either), so `generate`,
`evaluate`, `project` and `model.generator_init` take a folder where they take a .ckpt.
"""

import json
from pathlib import Path

import torch
from huggingface_hub.constants import CONFIG_NAME, REPOCARD_NAME, SAFETENSORS_SINGLE_FILE
from safetensors.torch import save_file

from lightning_modules.io.safe_load import read_safetensors

INFERENCE_PREFIXES = ("encoder.", "encoder_ema.", "G_ema.")  # what generate and evaluate run; G, D, pl_mean train
FORMAT = "voice2face-model-folder"
VERSION = 1
CONFIG_KEYS = ("hyper_parameters", "datamodule_hyper_parameters", "voice2face_progress", "voice2face_format")


def is_model_folder(path) -> bool:
    return Path(path).is_dir() and (Path(path) / SAFETENSORS_SINGLE_FILE).is_file()


def _plain(value, where):
    """`value` as JSON can hold it (tuples as lists); anything else is a ValueError naming `where`."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: a {type(value).__name__} has no place in config.json")


def write_model_folder(state: dict, out: Path, card: str) -> dict[str, torch.Tensor]:
    """Write a checkpoint's inference networks, its config and `card` into the folder `out` (made, and expected
    empty); return the tensors written."""
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in state["state_dict"].items() if k.startswith(INFERENCE_PREFIXES)
    }
    config = {"format": FORMAT, "version": VERSION}
    config.update({k: _plain(state.get(k), k) for k in CONFIG_KEYS if state.get(k) is not None})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / SAFETENSORS_SINGLE_FILE, metadata={"format": "pt", "voice2face": FORMAT})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (out / REPOCARD_NAME).write_text(card)
    return tensors


def read_model_folder(path) -> dict:
    """The checkpoint dict of a model folder: its tensors read by safetensors (a header and raw bytes: no
    unpickling), its config.json checked for this format. `voice2face_parts` says that only the inference
    networks are there."""
    path = Path(path)
    config_file, model_file = path / CONFIG_NAME, path / SAFETENSORS_SINGLE_FILE
    if not (config_file.is_file() and model_file.is_file()):
        raise ValueError(
            f"{path}: a folder, but not a model folder (it needs {SAFETENSORS_SINGLE_FILE} and {CONFIG_NAME}); "
            "give a .ckpt written by training, or a folder written by experiments.export format=pretrained"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file}: not a readable config.json ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(
            f"{config_file}: not a voice2face model folder's config (format {FORMAT!r}, version {VERSION}); "
            "write one with `python -m experiments.export ckpt=... format=pretrained out=DIR`"
        )
    if not isinstance(config.get("hyper_parameters"), dict):
        raise ValueError(f"{config_file}: hyper_parameters must be a mapping")
    tensors, _ = read_safetensors(model_file, "not a readable safetensors file", fix="export the model again")
    stray = sorted(k for k in tensors if not k.startswith(INFERENCE_PREFIXES))
    if stray:
        raise ValueError(f"{model_file}: tensors outside {list(INFERENCE_PREFIXES)}: {stray[:5]}")
    state = {k: config[k] for k in CONFIG_KEYS if k in config}
    return {**state, "state_dict": tensors, "voice2face_parts": INFERENCE_PREFIXES}
