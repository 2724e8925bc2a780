"""Tables from finished runs: `python -m experiments.report runs=[DIR,...] [labels=[...]]`.

One row per run (FID, path length, and any identity metrics asked for), with the paper's numbers beside
rows whose label the paper reports. A value a run could not compute shows as "—" with its reason below.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from experiments.schema import check_command_config

NAMES = {"fid": "FID ↓", "ppl_wend": "Path length ↓", "id_cosine": "ID cosine ↑"}


def find_metrics(run_dir: str | Path, split: str = "test") -> Path:
    """The one metrics_<split>.json under a run folder. Several (the end of training's, an evaluation of a
    snapshot, ...) are refused: the newest was taken, so a snapshot's figures could stand for the run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    found = sorted(run_dir.rglob(f"metrics_{split}.json"))
    if not found:
        raise FileNotFoundError(
            f"{run_dir}: no metrics_{split}.json (run python -m experiments.evaluate "
            f"ckpt=<a checkpoint of this run> split={split} first)"
        )
    if len(found) > 1:
        where = ", ".join(str(p.relative_to(run_dir)) for p in found[:4])
        raise ValueError(
            f"{run_dir}: {len(found)} metrics_{split}.json files ({where}); pass the folder that holds the one to "
            "report in runs=[...]"
        )
    return found[0]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.{digits}f}"


def make_table(rows: list[tuple[str, dict]], columns: list[str], paper: dict, title: str) -> str:
    """Markdown table: Model | FID | Path length | [paper FID | paper path length] | columns..."""
    columns = [c for c in columns if any(c in r for _, r in rows)]
    with_paper = any(label in paper for label, _ in rows)
    head = ["Model", NAMES["fid"], NAMES["ppl_wend"]]
    head += ["Paper FID", "Paper path length"] if with_paper else []
    head += [NAMES.get(c, c) for c in columns]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    reasons = []
    for label, result in rows:
        cells = [label, fmt(result.get("fid")), fmt(result.get("ppl_wend"))]
        if with_paper:
            ref = paper.get(label)
            cells += [fmt(ref[0]), fmt(ref[1])] if ref else ["", ""]
        cells += [fmt(result.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
        reasons += [f"- {label}, {k}: {v}" for k, v in result.get("_skipped", {}).items()]
    if reasons:
        lines += ["", "Not computed:", ""] + reasons
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> str:
    check_command_config(cfg, "report")
    runs = list(cfg.runs)
    labels = list(cfg.labels) if cfg.labels else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"report: {len(runs)} runs but {len(labels)} labels")
    rows = [(label, json.loads(find_metrics(r, cfg.split).read_text())) for label, r in zip(labels, runs)]
    table = make_table(rows, list(cfg.columns), OmegaConf.to_container(cfg.paper), cfg.title)
    print(table)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(table)
    return table


@hydra.main(config_path="conf", config_name="report", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
