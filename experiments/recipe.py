"""The recipe study of docs/recipe.md: every variant of `conf/recipe.yaml` trained at the same seed, scored on
the validation split (never the test split) during and after training, then one table and the curves.

    python -m experiments.recipe [only=[label,...]] [out=outputs/recipe] [seed=0]

Each variant is `python -m experiments.run <base overrides> <its overrides>` in `out/<label>` (experiments.launch:
a finished variant is not trained again, an interrupted one resumes). Writes
`out/table.md` and `out/curves_*.png` (against kimg and against training wall time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from experiments.curves import plot, read_curves
from experiments.launch import train_in

log = logging.getLogger(__name__)

COLUMNS = [  # (key in metrics_val.json, header)
    ("fd_probe", "fd_probe"),
    ("fd_probe/real", "floor"),
    ("attr/sex", "sex acc"),
    ("attr/skin_tone", "skin R²"),
    ("attr/hair_colour", "hair acc"),
]


def flatten(overrides: list) -> list[str]:
    """A variant's overrides with `${previous}` (a list inside the list) spliced in where it stands."""
    return [o for item in overrides for o in (flatten(item) if isinstance(item, list) else [item])]


def run_variant(label: str, overrides: list[str], cfg: DictConfig) -> Path:
    """The variant trained at the study's seed, scored on the validation split, in `out/<label>`."""
    run = [*cfg.base, *overrides, f"seed={cfg.seed}", f"task_name={label}"]
    return train_in(Path(cfg.out) / label, run, split="val")


def recall_key(result: dict) -> str | None:
    sizes = [int(k.rsplit("_g", 1)[1]) for k in result if k.startswith("recall@1_g") and "/" not in k]
    return f"recall@1_g{max(sizes)}" if sizes else None


def table(labels: list[str], folders: list[Path]) -> str:
    head = ["variant", "kimg", "train min", "img/s", *(h for _, h in COLUMNS), "recall@1 (chance)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, folder in zip(labels, folders):
        result = json.loads((folder / "metrics_val.json").read_text())
        progress = read_curves(folder, ["perf/train_s"])["perf/train_s"]
        kimg, seconds = (progress[-1][0], progress[-1][1]) if progress else (float("nan"), float("nan"))
        cells = [label, f"{kimg:.1f}", f"{seconds / 60:.1f}", f"{1000 * kimg / seconds:.0f}"]
        for key, _ in COLUMNS:
            value, ci = result.get(key), result.get(f"{key}/ci95")
            cells.append("–" if value is None else f"{value:.3g}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        rk = recall_key(result)
        cells.append("–" if rk is None else f"{result[rk]:.3f} ({result[rk + '/chance']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="conf", config_name="recipe")
@one_line_errors
def main(cfg: DictConfig) -> None:
    variants = OmegaConf.to_container(cfg.variants, resolve=True)
    labels = [label for label in variants if not cfg.only or label in cfg.only]
    folders = [run_variant(label, flatten(variants[label]), cfg) for label in labels]
    out = Path(cfg.out)
    (out / "table.md").write_text(table(labels, folders))
    for name, keys in cfg.curves.items():
        plot([str(f) for f in folders], labels, list(keys), out / f"curves_{name}.png")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
