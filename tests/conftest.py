"""Shared test helpers: compose the real Hydra configs the way `python -m experiments.run` does, and a quiet
Lightning Trainer for tests and benches that fit a module directly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments/conf/exp").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (ROOT / "experiments/conf/data").glob("*.yaml"))


def compose_train(overrides: list[str], output_dir: Path):
    """The composed `train` config with its run folder set to `output_dir` (as Hydra would at run time)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def quiet_trainer(root_dir, **kwargs) -> Trainer:
    """A one-device CPU Trainer without logger, checkpointing, progress bar or model summary, writing under
    `root_dir`; `kwargs` (max_epochs, callbacks, devices, strategy, accelerator, ...) override."""
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    return Trainer(**{**settings, **kwargs})


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(*overrides: str):
        return compose_train(list(overrides), tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()
