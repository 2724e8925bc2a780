"""The markdown summary of a `bench/gpu_check.sh` folder: one table of the steps, then each step's own table.

    python bench/gpu_report.py OUT_FOLDER > OUT_FOLDER/gpu_check.md

Reads what the steps left: steps.tsv (name, exit status, seconds, limit), pytest_gpu.log (pytest's last line),
kernels.md and train_step.md (the benches' tables), and the 1-kimg run's tick log run/csv/metrics.csv (the
last logged perf/* values) and its printed kernel paths. A step that did not finish says so instead of a number.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

STEPS = {  # name -> what it checks
    "pytest_gpu": "pytest -m gpu (compiled kernels vs the reference)",
    "kernels": "bench/kernels.py: Triton vs PyTorch per generator layer",
    "train_step": "bench/train_step.py --device cuda: paper-width step",
    "train_1kimg": "+exp=baseline trainer=gpu, 1 kimg",
}
TICK_KEYS = ("perf/sec_per_kimg", "perf/img_per_s", "perf/peak_alloc_gib", "perf/peak_reserved_gib")


def read_steps(folder: Path) -> dict[str, tuple[int, int, int]]:
    """{name: (exit status, seconds, limit)} from steps.tsv."""
    path = folder / "steps.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {name: (int(rc), int(sec), int(limit)) for name, rc, sec, limit in rows}


def status(rc: int, limit: int) -> str:
    if rc in (124, 137):
        return f"timed out at {limit} s"
    return "passed" if rc == 0 else f"failed (exit {rc})"


def last_line(path: Path, prefix: str = "") -> str:
    """The last non-empty line of a log that starts with `prefix` ("" if none)."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.startswith(prefix)]
    return lines[-1] if lines else ""


def last_tick(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of each tick key in a run's metrics.csv."""
    found: dict[str, float] = {}
    if not metrics_csv.is_file():
        return found
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            found.update({k: float(row[k]) for k in TICK_KEYS if row.get(k)})
    return found


def main(folder: Path) -> str:
    steps = read_steps(folder)
    lines = ["# GPU check", "", "| step | what | result | seconds |", "| --- | --- | --- | --- |"]
    for name, what in STEPS.items():
        result = status(steps[name][0], steps[name][2]) if name in steps else "not run"
        seconds = str(steps[name][1]) if name in steps else "-"
        lines.append(f"| {name} | {what} | {result} | {seconds} |")
    summary = last_line(folder / "pytest_gpu.log")
    if summary:
        lines += ["", f"pytest -m gpu: {summary}"]
    for name in ("kernels", "train_step"):
        table = folder / f"{name}.md"
        lines += ["", table.read_text().strip() if table.is_file() else f"{name}: no table (see {name}.log)"]
    tick = last_tick(folder / "run" / "csv" / "metrics.csv")
    lines += ["", "1-kimg run, last tick: " + (", ".join(f"{k} {v:.3g}" for k, v in tick.items()) or "none logged")]
    paths = last_line(folder / "train_1kimg.log", "kernels ")
    if paths:
        lines.append(f"kernel paths: {paths.removeprefix('kernels').strip()}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/gpu_report.py OUT_FOLDER")
    sys.stdout.write(main(Path(sys.argv[1])))
