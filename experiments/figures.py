"""What `experiments.report` draws beside its table: the paper's training curves of every row, a contact sheet of
each row's sample grids over kimg, and one report.html that shows them with the table (no network access: the
images lie beside it, named relative to it).

Curves come from each run's csv/metrics.csv (`experiments.curves.read_curves`). A row of several seeds is drawn as
one line, the mean over its seeds on the first seed's kimg steps, with the seeds' range shaded.
"""

from __future__ import annotations

import html
import logging
import re
import textwrap
from pathlib import Path

import numpy as np

from experiments.curves import read_curves

log = logging.getLogger(__name__)

# The paper's training-curve figures (7-12: D on real and on generated faces, 14-15: G through D and through the
# classifier), then what was measured over training: FID and path length where their weights were, else the
# probe's Fréchet distance.
LOSS_PANELS = {
    "loss/D_real": "D loss on real faces",
    "loss/D_fake": "D loss on generated faces",
    "loss/G_adv": "G loss through D",
    "loss/G_id": "G loss through the identity classifier",
}
METRIC_PANELS = {
    "metrics/fid": "FID (Inception)",
    "metrics/kid": "KID (Inception)",
    "metrics/ppl_zend": "path length (Z)",
    "metrics/ppl_wend": "path length (W)",
    "val/fd_probe": "fd_probe (probe features, not Inception)",
}
SHEET_GRIDS = 6  # sample grids per contact sheet, evenly spaced over training
SHEET_HEIGHT = 360  # pixels of each grid on the sheet


def row_folders(row: str | Path) -> list[Path]:
    """The run folders of a report row: its `seed<N>/` folders in seed order, else the row folder itself."""
    row = Path(row)
    seeds = sorted((p for p in row.glob("seed*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    return seeds or [row]


def smooth(values: np.ndarray) -> np.ndarray:
    """Running mean over about 1/25 of the points (per-step GAN losses are noise at full resolution)."""
    width = max(1, len(values) // 25)
    if width == 1:
        return values
    padded = np.concatenate([np.full(width // 2, values[0]), values, np.full(width - 1 - width // 2, values[-1])])
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def row_curve(folders: list[Path], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(kimg, mean, low, high) of `key` over a row's seeds on the first seed's kimg steps; None if none logged it
    (runs without csv/metrics.csv are left out)."""
    logged = [f for f in folders if (f / "csv" / "metrics.csv").is_file()]  # a run trained without the CSV log
    curves = [np.array([(k, v) for k, _, v in read_curves(f, [key])[key]]) for f in logged]
    curves = [c for c in curves if len(c)]
    if not curves:
        return None
    kimg = curves[0][:, 0]
    stacked = np.stack([np.interp(kimg, c[:, 0], smooth(c[:, 1])) for c in curves])
    return kimg, stacked.mean(0), stacked.min(0), stacked.max(0)


def plot_rows(rows: list[tuple[str, list[Path]]], panels: dict[str, str], out: Path, title: str) -> dict[str, list]:
    """One panel per key that some row logged, one line per row, saved to `out`: {key: the rows drawn in its
    panel} ({} and no file when no row logged any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {key: [(label, row_curve(folders, key)) for label, folders in rows] for key in panels}
    drawn = {key: lines for key, lines in drawn.items() if any(curve is not None for _, curve in lines)}
    if not drawn:
        return {}
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.4 * len(drawn), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, lines) in zip(axes[0], drawn.items()):
        for i, (label, curve) in enumerate(lines):
            if curve is None:
                continue
            kimg, mean, low, high = curve
            colour = colours[i % len(colours)]
            ax.plot(kimg, mean, "-o" if len(kimg) <= 30 else "-", ms=3, color=colour, lw=1.4, label=label)
            if (high > low).any():
                ax.fill_between(kimg, low, high, color=colour, alpha=0.15, lw=0)
        ax.set_title(panels[key], fontsize=10)
        ax.set_xlabel("kimg")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
        if "fd" in key or "fid" in key:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, int(12 * 4.4 * len(drawn))), fontsize=11)  # a narrow figure wraps it
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {key: [label for label, curve in lines if curve is not None] for key, lines in drawn.items()}


def kimg_of(grid: Path) -> float:
    """The kimg in a sample grid's name (samples_0006.016kimg.png -> 6.016)."""
    match = re.search(r"(\d+\.\d+)kimg", grid.name)
    return float(match.group(1)) if match else float("nan")


SHEET_MAX_PIXELS = 64_000_000  # a grid larger than this is no sample grid of a run (a 1024 px 8x4 grid: 33 M)


def contact_sheet(run: Path, out: Path) -> Path | None:
    """Up to SHEET_GRIDS of a run's sample grids, evenly spaced over training, side by side with their kimg;
    None when the run wrote no grids."""
    from PIL import Image, ImageDraw

    grids = sorted(run.glob("samples/samples_*kimg.png"), key=kimg_of)
    if not grids:
        return None
    picks = [grids[int(i)] for i in np.unique(np.linspace(0, len(grids) - 1, min(SHEET_GRIDS, len(grids))).round())]
    images, shown = [], []
    for grid in picks:
        try:
            with Image.open(grid) as im:
                if im.width * im.height > SHEET_MAX_PIXELS:  # a sample grid of ours is far smaller
                    raise OSError(f"{im.width}x{im.height} pixels, more than a sample grid holds")
                im = im.convert("RGB")
                images.append(im.resize((round(im.width * SHEET_HEIGHT / im.height), SHEET_HEIGHT)))
                shown.append(grid)
        except (OSError, Image.DecompressionBombError) as err:  # left out, named: the other grids still show
            log.warning("report: %s left out of the contact sheet (%s)", grid, err)
    if not images:
        return None
    picks = shown
    sheet = Image.new("RGB", (sum(im.width for im in images) + 8 * (len(images) - 1), SHEET_HEIGHT + 22), "white")
    draw, x = ImageDraw.Draw(sheet), 0
    for grid, im in zip(picks, images):
        draw.text((x + 4, 4), f"{kimg_of(grid):.1f} kimg", fill="black")
        sheet.paste(im, (x, 22))
        x += im.width + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def markdown_to_html(text: str, title: str = "") -> str:
    """The report's markdown (## headings, - bullets, | tables |, plain lines) as HTML; text is escaped, and a
    heading that repeats the page's `title` is left out."""
    out, table = [], []

    def flush():
        if table:
            cells = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in table]
            body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in cells[0])
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            if line[3:] != title:
                out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = (
    "body{font-family:sans-serif;margin:24px;max-width:1500px}table{border-collapse:collapse;margin:12px 0}"
    "td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}th{background:#eee}"
    "img{max-width:100%;border:1px solid #ddd;margin:6px 0}figcaption{font-size:12px;color:#444}"
)


def write_report(rows: list[tuple[str, str | Path]], table: str, out_dir: str | Path, title: str) -> Path:
    """The curves, the contact sheets and report.html (which shows the table and them) in `out_dir`."""
    out_dir = Path(out_dir)
    folders = [(label, row_folders(row)) for label, row in rows]
    figures: list[tuple[str, str]] = []  # (file name relative to the html, caption)
    for name, panels, what in (
        ("curves_losses.png", LOSS_PANELS, "losses"),
        ("curves_metrics.png", METRIC_PANELS, "metrics"),
    ):
        if plot_rows(folders, panels, out_dir / name, f"{title}: {what} over training"):
            seeds = "; a row of several seeds is their mean, its range shaded"
            figures.append((name, f"Training {what} from csv/metrics.csv, one line per row{seeds}."))
        else:
            log.warning("report: no run logged any of %s; no %s figure", list(panels), name)
    names: set[str] = set()
    for label, runs in folders:
        stem = f"samples_{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}"
        name, n = f"{stem}.png", 2
        while name in names:  # labels 'a b' and 'a_b' would share one file: each row gets a sheet of its own
            name, n = f"{stem}_{n}.png", n + 1
        names.add(name)
        if contact_sheet(runs[0], out_dir / name):
            figures.append((name, f"{label} ({runs[0].name}): sample grids over training, kimg above each."))
    body = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}"><figcaption>{html.escape(name)}: '
        f"{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{markdown_to_html(table, title)}\n{body}\n"
        "</body></html>\n"
    )
    path = out_dir / "report.html"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
