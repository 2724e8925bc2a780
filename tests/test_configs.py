"""Every experiment composes with every dataset on the CPU trainer and builds its datamodule, model and trainer
(the lightning-hydra-template's sweep test, with the real config tree)."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest
from conftest import DATASETS, EXPERIMENTS, ROOT
from lightning import LightningDataModule, LightningModule, Trainer

from experiments.run import build_callbacks, build_loggers


def test_config_groups_present():
    assert {"baseline", "nose", "relu", "dcgan", "stylegan", "smoke", "encoder_pretrain"} <= set(EXPERIMENTS)
    assert {"embedded", "voxvgg"} <= set(DATASETS)
    for group, names in {
        "trainer": ["cpu", "gpu", "ddp", "ddp_sim"],
        "logger": ["wandb", "csv", "many", "none"],
        "callbacks": ["default"],
        "paths": ["default"],
    }.items():
        for name in names:
            assert (ROOT / "experiments/conf" / group / f"{name}.yaml").is_file(), f"{group}/{name}"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_a_group_override_wins_over_every_experiment(compose_cfg, exp):
    """Experiments hold deltas: selecting an encoder group on the command line changes the composed encoder."""
    for group, key, value in (("resnet18_relu", "act", "relu"), ("resnet18_no_se", "se", False)):
        cfg = compose_cfg(f"+exp={exp}", f"model/encoder={group}")
        assert cfg.model.encoder[key] == value, f"+exp={exp} model/encoder={group}: {key}={cfg.model.encoder[key]}"


def test_the_ablations_select_encoder_groups(compose_cfg):
    assert compose_cfg("+exp=nose").model.encoder.se is False
    assert compose_cfg("+exp=relu").model.encoder.act == "relu"
    for exp in ("nose", "relu"):
        assert "override /model/encoder:" in (ROOT / "experiments/conf/exp" / f"{exp}.yaml").read_text()


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_instantiates(compose_cfg, exp, data, tmp_path):
    cfg = compose_cfg(
        f"+exp={exp}",
        f"data={data}",
        "trainer=cpu",
        "logger=csv",
        f"data.root={tmp_path}" if data == "voxvgg" else "data.corpus.identities=12",
    )
    text = (ROOT / "experiments/conf/exp" / f"{exp}.yaml").read_text()
    assert text.startswith("# @package _global_"), f"exp/{exp}.yaml must start with '# @package _global_'"
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, LightningDataModule)
    # the face size comes from the config itself (model.img_resolution: ${data.face_size})
    # stage 2 of a two-stage experiment reads the encoder file stage 1 writes at run time (tests/test_run.py)
    stage2 = {"encoder_mode": "joint"} if cfg.get("pretrain_encoder") and "encoder_ckpt" in cfg.model else {}
    model = hydra.utils.instantiate(cfg.model, num_classes=5, feature_dim=dm.feature_dim, _recursive_=False, **stage2)
    assert isinstance(model, LightningModule)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg, True), logger=build_loggers(cfg))
    assert isinstance(trainer, Trainer)


def test_ablations_differ_from_baseline_only_where_they_should(compose_cfg):
    base, nose, relu = (compose_cfg(f"+exp={e}").model for e in ("baseline", "nose", "relu"))
    assert base.encoder.se and base.encoder.act == "mish"
    assert not nose.encoder.se and nose.encoder.act == "mish"
    assert relu.encoder.se and relu.encoder.act == "relu"
    for other in (nose, relu):
        assert other.generator == base.generator and other.discriminator == base.discriminator
        assert (other.lr, list(other.betas)) == (base.lr, list(base.betas)) == (2e-4, [0.5, 0.999])


def test_cli_prints_composed_config():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=baseline", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: lightning_modules.voice2face.Voice2FaceGAN" in out.stdout
    assert "se_reduction: 16" in out.stdout


def test_cli_unknown_experiment_names_the_choices():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=no_such_exp", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "no_such_exp" in out.stderr and "baseline" in out.stderr
