"""Training curves of several runs side by side, from their csv/metrics.csv, against kimg and wall time:

    python -m experiments.curves runs=[outputs/a,outputs/b] labels=[A,B] out=curves.png [keys=[val/fd_probe,...]]

One column per key; the top row is against thousands of training images (`progress/kimg`), the bottom row
against the run's own training wall time (`perf/train_s`). Keys whose name says it is a distance (fd, kid) are
drawn on a log scale with the run's real-vs-real floor (`<key>/real`) dashed when it was logged.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from datamodules.cli_errors import one_line_errors
from experiments.schema import check_command_config

log = logging.getLogger(__name__)


def read_curves(run: str | Path, keys: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """{key: [(kimg, train seconds, value), ...]} of the rows of `run`/csv/metrics.csv that logged the key.

    A resumed run appends to the log from its checkpoint's kimg, after the rows its killed session wrote past
    that checkpoint: where kimg goes back, the earlier rows from there on are dropped (the resumed run redid
    those images), so a curve never doubles back."""
    file = Path(run) / "csv" / "metrics.csv"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no CSV log (train with logger=csv or logger=many)")
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in keys}
    last = float("-inf")
    for line, row in enumerate(rows, start=2):
        if not row.get("progress/kimg") or not row.get("perf/train_s"):
            continue
        try:
            kimg, seconds = float(row["progress/kimg"]), float(row["perf/train_s"])
            values = {key: float(row[key]) for key in keys if row.get(key)}
        except ValueError as err:
            raise ValueError(f"{file}: line {line}: not a number ({err})") from None
        if kimg < last:  # a resume: its rows replace those of the killed session from this kimg on
            out = {key: [p for p in points if p[0] < kimg] for key, points in out.items()}
        last = kimg
        for key, value in values.items():
            out[key].append((kimg, seconds, value))
    return out


def plot(runs: list[str], labels: list[str], keys: list[str], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs or not keys:
        raise ValueError("curves: no runs or no keys given; pass runs=[DIR,...] labels=[...] (and keys=[...])")
    if len(labels) != len(runs):
        raise ValueError(f"curves: {len(runs)} runs but {len(labels)} labels")
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 6.4), squeeze=False)
    # more than 10 runs would repeat the default cycle's colours: tab20 keeps up to 20 apart
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"] if len(runs) <= 10 else list(plt.cm.tab20.colors)
    for r, (run, label) in enumerate(zip(runs, labels)):
        floors = [f"{k}/real" for k in keys]
        curves = read_curves(run, keys + floors)
        for c, key in enumerate(keys):
            points = curves[key]
            if not points:
                log.warning("%s: no %s logged", run, key)
                continue
            kimg, secs, value = zip(*points)
            colour = colours[r % len(colours)]
            for row, x in ((0, kimg), (1, [s / 60 for s in secs])):
                axes[row][c].plot(x, value, "-o", ms=3, color=colour, label=label)
                if curves[f"{key}/real"]:
                    fk, fs, fv = zip(*curves[f"{key}/real"])
                    axes[row][c].plot(fk if row == 0 else [s / 60 for s in fs], fv, "--", color=colour, lw=0.8)
    for c, key in enumerate(keys):
        for row, xlabel in ((0, "kimg"), (1, "training wall time (min)")):
            ax = axes[row][c]
            ax.set_xlabel(xlabel)
            ax.set_title(key + (" (dashed: real-vs-real floor)" if "fd" in key or "kid" in key else ""), fontsize=9)
            if ("fd" in key or "kid" in key) and ax.lines:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run(cfg: DictConfig) -> Path:
    check_command_config(cfg, "curves")
    # cfg["keys"], not cfg.keys: that is DictConfig's keys() method (the command failed with a TypeError)
    return plot(list(cfg.runs), list(cfg.labels), list(cfg["keys"]), cfg.out, cfg.get("title", ""))


@hydra.main(version_base="1.3", config_path="conf", config_name="curves")
@one_line_errors
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    main()
