"""Evaluate a checkpoint: `python -m experiments.evaluate ckpt=PATH [split=test] [out=DIR]`.

Rebuilds the training-time datamodule from the checkpoint, runs `lightning_modules.metrics.evaluate`, and
writes metrics_<split>.json plus a markdown summary naming every metric it could not compute and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from datamodules.files import write_atomic
from datamodules.pipeline import checkpoint_data_hparams
from datamodules.voxvgg import VoxVGGDataModule
from experiments.schema import check_command_config, check_data_overrides
from lightning_modules.io.build import check_arguments
from lightning_modules.io.safe_load import load_data
from lightning_modules.metrics import evaluate, summary_markdown
from lightning_modules.metrics.settings import MetricsSettings
from lightning_modules.voice2face import Voice2FaceGAN
from lightning_modules.voice2face_checkpoint import check_features, model_from_checkpoint, read_checkpoint


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """Voice2FaceGAN from a checkpoint file, in eval mode on `device`."""
    return model_from_checkpoint(read_checkpoint(ckpt), device)


def data_hparams(ckpt: str | Path | dict, overrides: dict | None = None) -> dict:
    """The datamodule hyper-parameters a checkpoint (a path, or one read by read_checkpoint) stores, with
    `overrides` applied, checked against the datamodule's arguments."""
    state = ckpt if isinstance(ckpt, dict) else load_data(ckpt, "a voice2face checkpoint")
    where = "the checkpoint" if isinstance(ckpt, dict) else ckpt
    check_data_overrides(overrides or {})
    hparams = {**checkpoint_data_hparams(state, where), **(overrides or {})}
    check_arguments(
        VoxVGGDataModule,
        hparams,
        f"{where}: datamodule_hyper_parameters (with data_overrides)",
        "use the version that wrote it, or fix data_overrides",
    )
    return hparams


def build_datamodule(ckpt: str | Path | dict, overrides: dict | None = None, setup: bool = True) -> VoxVGGDataModule:
    """The datamodule the checkpoint (a path, or one read by read_checkpoint) was trained with, with `overrides`
    applied; prepared and set up when `setup`."""
    dm = VoxVGGDataModule(**data_hparams(ckpt, overrides))
    if setup:
        dm.prepare_data()
        dm.setup("test")
    return dm


def check_earlier_metrics(file: Path, meta: dict, overwrite: bool) -> None:
    """Refuse to replace the metrics of another checkpoint, or of this file at another kimg (a later last.ckpt),
    unless told to: evaluating each snapshot of a run into its checkpoints folder kept only the last one's."""
    if overwrite or not file.is_file():
        return
    try:
        earlier = json.loads(file.read_text()).get("_meta") or {}
    except (ValueError, AttributeError):  # not ours, or cut short: still something a person may want
        earlier = {}
    if (earlier.get("ckpt"), earlier.get("kimg")) != (meta["ckpt"], meta["kimg"]):
        source = f"{earlier['ckpt']} at {earlier.get('kimg')} kimg" if earlier.get("ckpt") else "another run"
        raise FileExistsError(
            f"{file}: holds the metrics of {source}; pass out=DIR (a folder of its own for this checkpoint), or "
            "overwrite=true to replace them"
        )


def run(cfg: DictConfig) -> dict:
    check_command_config(cfg, "evaluate")
    ckpt = Path(cfg.ckpt)
    state = read_checkpoint(ckpt)  # read once, for the model and the data
    model = model_from_checkpoint(state, cfg.device)
    out = Path(cfg.out) if cfg.out else ckpt.parent
    meta = {
        "ckpt": str(ckpt.resolve()),
        "split": cfg.split,
        "kimg": getattr(model, "cur_nimg", 0) / 1000,
        "generator": model.hparams.get("generator", {}).get("_target_"),
        "encoder": {k: v for k, v in model.hparams.get("encoder", {}).items() if k in ("_target_", "se", "act")},
    }
    check_earlier_metrics(out / f"metrics_{cfg.split}.json", meta, cfg.get("overwrite", False))
    try:  # before the evaluation, not after it: its figures would be lost
        out.mkdir(parents=True, exist_ok=True)
        writable = os.access(out, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise PermissionError(f"{out}: cannot write the metrics there; pass out=DIR (a writable folder)")
    dm = build_datamodule(state, OmegaConf.to_container(cfg.data_overrides), setup=False)
    check_features(model, dm.feature_dim, "data (with data_overrides)")
    dm.prepare_data()
    dm.setup("test")
    settings = MetricsSettings.of(cfg.metrics)
    settings = replace(settings, cache_dir=settings.cache_dir or str(out / "fid_cache"))
    result = evaluate(model, dm, settings, split=cfg.split)
    result["_meta"] = meta
    out.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(result, f"{ckpt.name} ({cfg.split})")
    # the .md first: the .json, which the check above reads, then always describes a complete pair
    write_atomic(out / f"metrics_{cfg.split}.md", lambda p: p.write_text(markdown))
    write_atomic(out / f"metrics_{cfg.split}.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(markdown)
    print(f"wrote {out / f'metrics_{cfg.split}.json'}")
    return result


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
