"""`train(cfg)` end to end on a small embedded corpus: the path `make run` takes, at smoke size."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from experiments.run import train

SMALL = [
    "+exp=smoke",
    "logger=csv",
    "data.corpus.identities=12",
    "metrics.probe.steps=30",
    "metrics.ppl.num_samples=8",
    "metrics.callback.every_kimg=0",
]


@pytest.mark.integration
def test_smoke_trains_evaluates_and_reports(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg(*SMALL, f"paths.cache_dir={tmp_path / 'cache'}")
    metrics, objects = train(cfg)
    out = tmp_path / "run"
    model = objects["model"]
    assert model.cur_nimg >= cfg.model.total_kimg * 1000
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "samples").glob("*.png")), "no sample grid written"
    with open(out / "csv" / "metrics.csv") as f:  # the tick log: speed at every logged step
        rows = [r for r in csv.DictReader(f) if r.get("perf/sec_per_kimg")]
    assert rows and all(float(r["perf/sec_per_kimg"]) > 0 and float(r["perf/img_per_s"]) > 0 for r in rows)
    result = json.loads((out / "metrics_test.json").read_text())
    n_test = len(objects["datamodule"].identities("test"))
    assert "id_cosine" in result and f"recall@1_g{n_test}" in result and "fd_probe" in result
    # Without local Inception / VGG weights the run says why instead of reporting a number.
    assert "fid" in result or "fid" in result["_skipped"]
    printed = capsys.readouterr().out
    assert "checkpoint" in printed and str(out) in printed
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["num_classes"] == objects["datamodule"].num_classes


@pytest.mark.integration
def test_cli_fast_dev_run(tmp_path):
    """The user's command line, with Lightning's fast_dev_run, in a fresh root (corpus made on the fly)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [sys.executable, "-m", "experiments.run", *SMALL, "+trainer.fast_dev_run=true", "evaluate=false"]
    cmd += ["callbacks.ticks.every_s=0", "trainer.log_every_n_steps=1"]  # a tick line at every step
    env = {**os.environ, "VOICE2FACE_ROOT": str(tmp_path)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list((tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt")), out.stdout[-2000:]
    assert "checkpoint" in out.stdout
    # stdout is a pipe, as in `make run > log.txt`: training shows as tick lines, stage 1 and stage 2
    tick = r"kimg \d+\.\d\d \| [\d.]+ s/kimg \| [\d.]+ img/s \| loss D -?[\d.]+ G -?[\d.]+ \| mem [\d.]+ GiB \| eta "
    assert re.search(tick, out.stdout), out.stdout[-3000:]
    assert re.search(r"step \d+ \| [\d.]+ s/step \| loss [\d.]+ \| mem [\d.]+ GiB", out.stdout), out.stdout[-3000:]


@pytest.mark.integration
def test_two_stage_run_pretrains_then_freezes_the_encoder(compose_cfg, tmp_path):
    """pretrain_encoder: stage 1 trains the GAN's own encoder on speaker classification, stage 2 loads and
    freezes it; a resume finds the stage-1 file instead of training it again."""
    stage1 = ["pretrain_encoder.steps=3", "pretrain_encoder.model.lr=0.05", "pretrain_encoder.model.cycle_steps=3"]
    cfg = compose_cfg(
        *SMALL, *stage1, "model.encoder_mode=frozen", "evaluate=false", f"paths.cache_dir={tmp_path / 'cache'}"
    )
    _, objects = train(cfg)
    encoder_file = tmp_path / "run" / "stage1" / "encoder.pt"
    saved = torch.load(encoder_file, weights_only=True)["encoder"]
    trained = objects["model"].encoder.state_dict()
    assert objects["model"].hparams.encoder_ckpt == str(encoder_file)
    assert all(torch.equal(saved[k], v) for k, v in trained.items())  # frozen through stage 2
    assert any("running_mean" in k and v.abs().sum() > 0 for k, v in saved.items())  # stage 1 did train
    mtime = encoder_file.stat().st_mtime
    cfg = compose_cfg(
        *SMALL,
        *stage1,
        "model.encoder_mode=frozen",
        "evaluate=false",
        "model.total_kimg=0.064",
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    train(cfg)
    assert encoder_file.stat().st_mtime == mtime


@pytest.mark.integration
def test_smoke_runs_both_stages_and_stage2_starts_from_stage1(compose_cfg, tmp_path):
    """+exp=smoke is the baseline's schedule in small: stage 1 writes the encoder, stage 2 is built from exactly
    those weights (model.encoder_ckpt, filled in by the run) and fine-tunes them."""
    import hydra

    _, objects = train(compose_cfg(*SMALL, "evaluate=false", f"paths.cache_dir={tmp_path / 'cache'}"))
    encoder_file = tmp_path / "run" / "stage1" / "encoder.pt"
    cfg, model = objects["cfg"], objects["model"]
    assert cfg.model.encoder_mode == "finetune" and cfg.model.encoder_ckpt == str(encoder_file)
    saved = torch.load(encoder_file, weights_only=True)["encoder"]
    dm = objects["datamodule"]
    start = hydra.utils.instantiate(
        cfg.model, num_classes=dm.num_classes, feature_dim=dm.feature_dim, _recursive_=False
    ).encoder.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.items())  # stage 2 starts at stage 1's weights
    trained = model.encoder.state_dict()
    assert any(not torch.equal(saved[k], v) for k, v in trained.items() if v.is_floating_point())  # fine-tuned


@pytest.mark.integration
def test_mfcc_front_end_composes_and_trains(compose_cfg, tmp_path):
    """+exp=baseline_mfcc is the baseline on 13 MFCC + Δ + ΔΔ (39 bands, the paper's 0.95, Hamming, K = 2); the same
    group selection trains a smoke step end to end."""
    features = compose_cfg("+exp=baseline_mfcc").data.features
    assert (features.kind, features.n_mfcc, features.delta_width, features.preemphasis) == ("mfcc", 13, 2, 0.95)
    assert compose_cfg("+exp=baseline").data.features.preemphasis == 0.95  # log-mel at the paper's value too
    cfg = compose_cfg(*SMALL, "data/features=mfcc", "evaluate=false", f"paths.cache_dir={tmp_path / 'cache'}")
    _, objects = train(cfg)
    assert objects["datamodule"].feature_dim == 39 and objects["model"].cur_nimg > 0


@pytest.mark.integration
def test_a_read_only_home_does_not_stop_wandb(tmp_path):
    """W&B writes staging files and settings under HOME too: with HOME unwritable the run failed at its first W&B
    image, mid-training ("Unable to write staging files"). Those folders move into the run folder."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    (tmp_path / "home").touch()  # a HOME nobody can write under, root included
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), VOICE2FACE_ROOT=str(tmp_path))
    cmd = [sys.executable, "-m", "experiments.run", *[x for x in SMALL if x != "logger=csv"], "logger=many"]
    cmd += ["evaluate=false"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert (run / "wandb" / "wandb_data_dir").is_dir() and list((run / "wandb").glob("offline-run-*"))
