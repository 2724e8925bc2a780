"""Rows x seeds, then one table: `python -m experiments.sweep name=ablations seeds=[0,1,2] kimg=6 base=baseline_cpu`.

The rows of each sweep are in conf/sweep.yaml (`make ablations`, `make table2`, `make frontends` run them). Each
run is `python -m experiments.run <row overrides> model.total_kimg=<kimg> seed=<seed>` in `out/<row>/seed<seed>`;
the table (out/table.md) gives mean ± sd over the seeds with the header experiments.report writes.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from experiments import report
from experiments.launch import train_in
from experiments.schema import check_command_config


def run(cfg: DictConfig) -> str:
    check_command_config(cfg, "sweep")
    if cfg.name not in cfg.sweeps:
        raise ValueError(f"sweep: name must be one of {sorted(cfg.sweeps)}, got {cfg.name!r}")
    sweep, out = cfg.sweeps[cfg.name], Path(cfg.out)
    rows = OmegaConf.to_container(sweep.rows, resolve=True)
    for seed in cfg.seeds:  # seed-major: an early stop leaves every row with the same seeds
        for label, overrides in rows.items():
            run_args = [*overrides, f"model.total_kimg={cfg.kimg}", f"seed={seed}", f"task_name={label}"]
            train_in(out / label / f"seed{seed}", [*run_args, f"eval_split={cfg.split}", *cfg.run_args], cfg.split)
    settings = OmegaConf.merge(
        OmegaConf.load(Path(__file__).parent / "conf" / "report.yaml"),
        cfg.report,
        # the sweep's own table, made anew from every seed each time the sweep is run (or extended by seeds)
        {"runs": [str(out / label) for label in rows], "labels": list(rows), "out": str(out / "table.md")},
        {"overwrite": True},
        {"title": f"{sweep.title}: +exp={cfg.base}, {cfg.kimg} kimg, seeds {list(cfg.seeds)}", "split": cfg.split},
    )
    del settings["defaults"]  # Hydra's own settings (conf/hydra/command.yaml), not report's
    return report.run(settings)


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
