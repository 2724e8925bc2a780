"""Evaluate a checkpoint: `python -m experiments.evaluate ckpt=PATH [split=test] [out=DIR]`.

Rebuilds the training-time datamodule from the checkpoint, runs `lightning_modules.metrics.evaluate`, and
writes metrics_<split>.json plus a markdown summary naming every metric it could not compute and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from datamodules.voxvgg import VoxVGGDataModule
from lightning_modules.build import check_network_config
from lightning_modules.metrics import evaluate, summary_markdown
from lightning_modules.safe_load import load_data
from lightning_modules.voice2face import Voice2FaceGAN


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_checkpoint(ckpt: str | Path) -> dict:
    """A voice2face training checkpoint, read once as data (weights_only), its networks' configs checked before
    anything is built from them."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (ckpt= must name a .ckpt written by training)")
    state = load_data(path, "a voice2face checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a voice2face training checkpoint (no hyper_parameters / state_dict)")
    for part in ("encoder", "generator", "discriminator"):
        check_network_config(state["hyper_parameters"].get(part), f"{path}: model.{part}")
    return state


def model_from(state: dict, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """Voice2FaceGAN of a read checkpoint, in eval mode on `device` (as Lightning's load_from_checkpoint builds it:
    the stored hyper-parameters, then on_load_checkpoint, then the weights, strictly)."""
    model = Voice2FaceGAN(**state["hyper_parameters"])
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"], strict=True)
    return model.to(device).eval()


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """Voice2FaceGAN from a checkpoint file, in eval mode on `device`."""
    return model_from(read_checkpoint(ckpt), device)


def data_hparams(ckpt: str | Path | dict, overrides: dict | None = None) -> dict:
    """The datamodule hyper-parameters a checkpoint (a path, or one read by read_checkpoint) stores (Lightning keeps
    them), with `overrides` applied."""
    state = ckpt if isinstance(ckpt, dict) else load_data(ckpt, "a voice2face checkpoint")
    hparams = state.get("datamodule_hyper_parameters") if isinstance(state, dict) else None
    if hparams is None:
        where = "the checkpoint" if isinstance(ckpt, dict) else ckpt
        raise ValueError(
            f"{where}: no datamodule hyper-parameters in this checkpoint, so its training-time "
            "data and audio features are unknown (train through experiments.run)"
        )
    return {**dict(hparams), **(overrides or {})}


def build_datamodule(ckpt: str | Path | dict, overrides: dict | None = None, setup: bool = True) -> VoxVGGDataModule:
    """The datamodule the checkpoint (a path, or one read by read_checkpoint) was trained with, with `overrides`
    applied; prepared and set up when `setup`."""
    dm = VoxVGGDataModule(**data_hparams(ckpt, overrides))
    if setup:
        dm.prepare_data()
        dm.setup("test")
    return dm


def run(cfg: DictConfig) -> dict:
    ckpt = Path(cfg.ckpt)
    state = read_checkpoint(ckpt)  # read once, for the model and the data
    model = model_from(state, pick_device(cfg.device))
    dm = build_datamodule(state, OmegaConf.to_container(cfg.data_overrides))
    out = Path(cfg.out) if cfg.out else ckpt.parent
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    metrics_cfg["cache_dir"] = metrics_cfg.get("cache_dir") or str(out / "fid_cache")
    result = evaluate(model, dm, metrics_cfg, split=cfg.split)
    result["_meta"] = {
        "ckpt": str(ckpt.resolve()),
        "split": cfg.split,
        "kimg": getattr(model, "cur_nimg", 0) / 1000,
        "generator": model.hparams.get("generator", {}).get("_target_"),
        "encoder": {k: v for k, v in model.hparams.get("encoder", {}).items() if k in ("_target_", "se", "act")},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{cfg.split}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = summary_markdown(result, f"{ckpt.name} ({cfg.split})")
    (out / f"metrics_{cfg.split}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / f'metrics_{cfg.split}.json'}")
    return result


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
