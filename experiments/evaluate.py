"""Evaluate a checkpoint: `python -m experiments.evaluate ckpt=PATH [split=test] [out=DIR]`.

Rebuilds the training-time datamodule from the checkpoint, runs `lightning_modules.metrics.evaluate`, and
writes metrics_<split>.json plus a markdown summary naming every metric it could not compute and why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(ckpt: str | Path, device: str | torch.device = "cpu"):
    """Voice2FaceGAN from a checkpoint, in eval mode on `device`."""
    from lightning_modules.build import check_network_config
    from lightning_modules.safe_load import load_data
    from lightning_modules.voice2face import Voice2FaceGAN

    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (ckpt= must name a .ckpt written by training)")
    state = load_data(path, "a voice2face checkpoint")  # the networks' configs are checked before they are built
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a voice2face training checkpoint (no hyper_parameters / state_dict)")
    for part in ("encoder", "generator", "discriminator"):
        check_network_config(state["hyper_parameters"].get(part), f"{path}: model.{part}")
    return Voice2FaceGAN.load_from_checkpoint(str(path), map_location=device, weights_only=True).eval()


def build_datamodule(ckpt: str | Path, overrides: dict | None = None, setup: bool = True):
    """The datamodule the checkpoint was trained with (Lightning stores its hyper-parameters in the
    checkpoint), with `overrides` applied; prepared and set up when `setup`."""
    from datamodules.voxvgg import VoxVGGDataModule
    from lightning_modules.safe_load import load_data

    state = load_data(ckpt, "a voice2face checkpoint")
    hparams = state.get("datamodule_hyper_parameters")
    if hparams is None:
        raise ValueError(
            f"{ckpt}: no datamodule hyper-parameters in this checkpoint, so its training-time "
            "data and audio features are unknown (train through experiments.run)"
        )
    dm = VoxVGGDataModule(**{**dict(hparams), **(overrides or {})})
    if setup:
        dm.prepare_data()
        dm.setup("test")
    return dm


def run(cfg: DictConfig) -> dict:
    from lightning_modules.metrics import evaluate, summary_markdown

    ckpt = Path(cfg.ckpt)
    model = load_model(ckpt, pick_device(cfg.device))
    dm = build_datamodule(ckpt, OmegaConf.to_container(cfg.data_overrides))
    out = Path(cfg.out) if cfg.out else ckpt.parent
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    metrics_cfg["cache_dir"] = metrics_cfg.get("cache_dir") or str(out / "fid_cache")
    result = evaluate(model, dm, metrics_cfg, split=cfg.split)
    result["_meta"] = {
        "ckpt": str(ckpt.resolve()),
        "split": cfg.split,
        "kimg": getattr(model, "cur_nimg", 0) / 1000,
        "generator": model.hparams.get("generator", {}).get("_target_"),
        "encoder": {
            k: v for k, v in model.hparams.get("encoder", {}).items() if k in ("_target_", "se", "act")
        },
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
