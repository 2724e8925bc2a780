"""Tables from finished runs: `python -m experiments.report runs=[DIR,...] [labels=[...]]`.

One row per entry of `runs`: a run folder, or a folder of one run per seed (`seed<N>/`, as `make ablations
SEEDS=...` writes them), shown as mean ± sd over the seeds. FID and path length first, then the `columns` asked
for. A header states what stands behind the numbers (seeds, kimg, FID sample counts, the path-length variant and
its latents); the paper's FID and path length are printed beside rows whose label the paper reports, and only
with that header. A value a run could not compute shows as "—" with its reason below. With `out`, the training
curves, each row's sample grids over kimg and a report.html showing them go beside it (`experiments.figures`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from datamodules.files import unreadable_reason
from experiments.figures import row_folders, write_report
from experiments.schema import check_command_config

NAMES = {
    "fid": "FID ↓",
    "kid": "KID ↓",
    "ppl_zend": "Path length (Z) ↓",
    "ppl_wend": "Path length (W) ↓",
    "id_cosine": "ID cosine ↑",
    "fd_probe": "fd_probe ↓",
}
ALL_GALLERY = "recall@1_all"  # column alias: recall@1 in the largest gallery the run reports (every identity)


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


def read_metrics(path: Path) -> dict:
    """One metrics_<split>.json, checked before it is read (a FIFO there would block the read for ever) and after:
    an object of figures whose `_skipped` and `_notes` are objects of reasons."""
    reason = unreadable_reason(path)
    if reason:
        raise ValueError(f"{path}: {reason}; a metrics file is what experiments.evaluate writes")
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a metrics file (not JSON: {err}); rerun experiments.evaluate") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path}: not a metrics file (a JSON {type(result).__name__}, not an object of figures)")
    for key in ("_skipped", "_notes"):
        if not isinstance(result.get(key, {}), dict):
            raise ValueError(f"{path}: its {key} is a {type(result[key]).__name__}, not an object of reasons")
    return result


def read_row(run_dir: str | Path, split: str = "test") -> list[dict]:
    """The metrics of a row: one run, or one per `seed<N>/` subfolder (in seed order)."""
    return [read_metrics(find_metrics(f, split)) for f in row_folders(run_dir)]


def few_faces(result: dict) -> bool:
    """Whether the evaluation noted that its FID rests on too few generated faces (`_notes.fid`)."""
    return "fid" in result and "fid" in (result.get("_notes") or {})


def column_key(results: list[dict], column: str) -> str:
    """`recall@1_all` -> recall@1_g<largest gallery>; any other column is its own key."""
    if column != ALL_GALLERY:
        return column
    sizes = {int(k.rsplit("_g", 1)[1]) for r in results for k in r if k.startswith("recall@1_g") and "/" not in k}
    return f"recall@1_g{max(sizes)}" if sizes else column


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.{digits}f}"


def cell(results: list[dict], key: str) -> str:
    """One value, or mean ± sd over the seeds that have it (n named when some lack it)."""
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    if not values:
        return "—"
    if len(results) == 1:
        return fmt(values[0])
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    short = f" (n={len(values)})" if len(values) < len(results) else ""
    return f"{fmt(mean)} ± {sd:.{1 if abs(mean) >= 10 else 3}f}{short}"  # the sd to the mean's decimals


def counts(result: dict) -> str | None:
    if "num_generated" not in result:
        return None
    return f"{result['num_generated']} / {result.get('num_real')}"


def header(rows: list[tuple[str, list[dict]]], ppl_key: str, split: str) -> list[str]:
    """What stands behind the numbers, read from the runs themselves; where rows differ, every value is listed."""

    def seen(get) -> str:
        values = sorted({str(get(r)) for _, results in rows for r in results if get(r) is not None})
        return " / ".join(values) if values else "not recorded"

    seeds = " / ".join(str(n) for n in sorted({len(results) for _, results in rows}))
    floor = seen(lambda r: fmt(r["fd_probe/real"]) if "fd_probe/real" in r else None)
    return [
        f"- split: {split}; seeds per row: {seeds} (mean ± sd over the seeds where more than one)",
        f"- training budget: {seen(lambda r: r.get('kimg'))} kimg",
        f"- FID sample counts (generated / real faces): {seen(counts)}",
        f"- path length: {ppl_key}, {seen(lambda r: (r.get('_notes') or {}).get('ppl'))}",
        f"- fd_probe: in the face probe's feature space (not Inception); its real-vs-real floor {floor}",
        f"- face probe: {seen(lambda r: r.get('_probe'))}",
    ]


def make_table(
    rows: list[tuple[str, list[dict]]], columns: list[str], paper: dict, title: str, ppl_key: str, split: str = "test"
) -> str:
    """Markdown: the header, then Model | FID | Path length | [paper FID | paper path length] | columns..."""
    every = [r for _, results in rows for r in results]
    columns = [column_key(every, c) for c in columns]
    columns = [c for c in columns if any(c in r for r in every)]
    with_paper = any(label in paper for label, _ in rows)
    head = ["Model", NAMES["fid"], NAMES[ppl_key]]
    head += ["Paper FID", "Paper path length"] if with_paper else []
    head += [NAMES.get(c, c) for c in columns]
    lines = [f"## {title}", "", *header(rows, ppl_key, split)]
    if with_paper:
        lines.append("- paper: FID and path length as the paper reports them (its path-length variant is not stated)")
    lines += ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    reasons: dict[tuple[str, str], list[str]] = {}  # (metric, why) -> the rows it holds for
    for label, results in rows:
        cells = [label, cell(results, "fid") + (" ⚠" if any(map(few_faces, results)) else ""), cell(results, ppl_key)]
        if with_paper:
            ref = paper.get(label)
            cells += [fmt(ref[0]), fmt(ref[1])] if ref else ["", ""]
        cells += [cell(results, c) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
        for key, why in {k: v for r in results for k, v in (r.get("_skipped") or {}).items()}.items():
            reasons.setdefault((key, why), []).append(label)
    warned = next((r["_notes"]["fid"] for r in every if few_faces(r)), None)
    if warned:
        lines += ["", f"⚠ {warned}"]
    if reasons:
        lines += ["", "Not computed:", ""] + [
            f"- {k} ({', '.join(labels)}): {why}" for (k, why), labels in reasons.items()
        ]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> str:
    check_command_config(cfg, "report")
    runs = list(cfg.runs)
    labels = list(cfg.labels) if cfg.labels else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"report: {len(runs)} runs but {len(labels)} labels")
    if cfg.out and not cfg.overwrite:  # before any work: the table and report.html of an earlier report stay
        written = [Path(cfg.out)] + ([Path(cfg.out).parent / "report.html"] if cfg.get("figures", True) else [])
        there = [str(p) for p in written if p.exists()]
        if there:
            raise FileExistsError(f"{', '.join(there)}: already there; choose another out= or pass overwrite=true")
    rows = [(label, read_row(r, cfg.split)) for label, r in zip(labels, runs)]
    paper = OmegaConf.to_container(cfg.paper)
    table = make_table(rows, list(cfg.columns), paper, cfg.title, cfg.ppl, cfg.split)
    print(table)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(table)
        if cfg.get("figures", True):  # the curves, contact sheets and report.html beside the table
            print(write_report(list(zip(labels, runs)), table, Path(cfg.out).parent, cfg.title))
    return table


@hydra.main(config_path="conf", config_name="report", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
