"""experiments.sweep: every row of every sweep composes into a real train config, the ablation rows at the
paper's size are the named ablation experiments, and a sweep runs rows x seeds into out/<row>/seed<N> and tables
them (the runs stubbed here; tests/test_evaluate.py checks the table itself)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ROOT, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf


def sweep_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=["name=ablations", *overrides])
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("base", ["baseline", "baseline_cpu"])
@pytest.mark.integration
def test_every_row_composes(base, tmp_path):
    cfg = sweep_cfg(f"base={base}")
    for name, sweep in OmegaConf.to_container(cfg.sweeps, resolve=True).items():
        for label, overrides in sweep["rows"].items():
            compose_train([*overrides, f"model.total_kimg={cfg.kimg}"], tmp_path / name / label)


@pytest.mark.integration
def test_paper_size_ablation_rows_are_the_named_experiments(tmp_path):
    rows = OmegaConf.to_container(sweep_cfg("base=baseline").sweeps.ablations.rows, resolve=True)
    for label, exp in (("BaseModel", "baseline"), ("NoSE", "nose"), ("ReLU", "relu")):
        row = compose_train(rows[label], tmp_path / label)
        named = compose_train([f"+exp={exp}"], tmp_path / exp)
        assert OmegaConf.to_container(row.model) == OmegaConf.to_container(named.model), label


def test_a_sweep_runs_rows_by_seeds_then_tables_them(tmp_path, monkeypatch):
    import experiments.launch
    from experiments.sweep import run

    ran = []

    def fake_run(cmd, **kwargs):  # a finished run: its metrics where experiments.run writes them
        ran.append(cmd)
        folder = next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.run.dir="))
        seed = int(next(a.split("=", 1)[1] for a in cmd if a.startswith("seed=")))
        metrics = {"fid": 30.0 + seed, "num_generated": 10, "num_real": 20, "kimg": 6.0, "_skipped": {}}
        (tmp_path / folder / "metrics_test.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(experiments.launch.subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    table = run(sweep_cfg("seeds=[0,1]", "base=baseline_cpu", "out=sw"))
    assert len(ran) == 6 and sorted(p.parent.name + "/" + p.name for p in (tmp_path / "sw").glob("*/seed*[0-9]")) == [
        f"{row}/seed{s}" for row in ("BaseModel", "NoSE", "ReLU") for s in (0, 1)
    ]
    assert any("model/encoder=resnet18_no_se" in cmd for cmd in ran)
    assert "| BaseModel | 30.5 ± 0.7 |" in table and "+exp=baseline_cpu, 6 kimg, seeds [0, 1]" in table
    assert (tmp_path / "sw" / "table.md").read_text() == table
    run(sweep_cfg("seeds=[0,1]", "base=baseline_cpu", "out=sw"))
    assert len(ran) == 6  # finished runs are kept


def test_make_passes_the_seeds_as_a_list():
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "ablations", "SEEDS=0 1 2", "KIMG=8", "BASE=baseline_cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'experiments.sweep name=ablations "seeds=[0,1,2]" kimg=8' in out and "base=baseline_cpu" in out
