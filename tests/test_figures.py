"""experiments.figures: the report's training curves (one line per row), contact sheets and report.html."""

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.figures import LOSS_PANELS, METRIC_PANELS, contact_sheet, plot_rows, row_curve, write_report

LOSSES = list(LOSS_PANELS)


def fake_run(folder: Path, offset: float, probe: bool = True, grids: int = 0) -> Path:
    """A run folder with csv/metrics.csv (losses at every step, fd_probe every 4th) and `grids` sample grids."""
    (folder / "csv").mkdir(parents=True)
    keys = ["progress/kimg", "perf/train_s", *LOSSES, "val/fd_probe"]
    with open(folder / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        for step in range(1, 41):
            row = {"progress/kimg": step * 0.1, "perf/train_s": step * 2.0}
            row.update({key: offset + np.sin(step / 5 + i) for i, key in enumerate(LOSSES)})
            if probe and step % 4 == 0:
                row["val/fd_probe"] = 30 - step / 2 + offset
            writer.writerow(row)
    for k in range(grids):
        (folder / "samples").mkdir(exist_ok=True)
        Image.new("RGB", (80, 160), (40 * k, 100, 200)).save(folder / "samples" / f"samples_{k * 2:04d}.000kimg.png")
    return folder


@pytest.fixture
def rows(tmp_path):
    """Two rows: two seeds with grids and fd_probe, and a single run that logged losses only and drew no grids."""
    fake_run(tmp_path / "BaseModel" / "seed0", 0.0, grids=8)
    fake_run(tmp_path / "BaseModel" / "seed1", 2.0, grids=8)
    fake_run(tmp_path / "ReLU", 1.0, probe=False)
    return [("BaseModel", tmp_path / "BaseModel"), ("ReLU", tmp_path / "ReLU")]


def test_row_curve_averages_the_seeds_on_the_first_seeds_steps(rows):
    seeds = [rows[0][1] / "seed0", rows[0][1] / "seed1"]
    kimg, mean, low, high = row_curve(seeds, "val/fd_probe")
    assert np.allclose(kimg, np.arange(4, 41, 4) * 0.1)
    assert np.allclose(high - low, 2.0) and np.allclose(mean, (low + high) / 2)
    assert row_curve(seeds, "metrics/fid") is None


def test_each_panel_has_one_line_per_row_that_logged_it(rows, tmp_path):
    from experiments.figures import row_folders

    folders = [(label, row_folders(row)) for label, row in rows]
    losses = plot_rows(folders, LOSS_PANELS, tmp_path / "losses.png", "t")
    assert losses == {key: ["BaseModel", "ReLU"] for key in LOSSES} and (tmp_path / "losses.png").is_file()
    metrics = plot_rows(folders, METRIC_PANELS, tmp_path / "metrics.png", "t")
    assert metrics == {"val/fd_probe": ["BaseModel"]}  # FID and path length were logged by no run: no panel
    assert plot_rows(folders, {"metrics/fid": "FID"}, tmp_path / "none.png", "t") == {}
    assert not (tmp_path / "none.png").exists()


def test_the_contact_sheet_spreads_six_grids_over_training(rows, tmp_path):
    sheet = contact_sheet(rows[0][1] / "seed0", tmp_path / "sheet.png")
    with Image.open(sheet) as im:
        assert im.height == 360 + 22 and im.width == 6 * 180 + 5 * 8  # 80x160 grids scaled to 360 px high
    assert contact_sheet(rows[1][1], tmp_path / "none.png") is None


def test_report_html_names_every_image_it_shows_and_each_exists(rows, tmp_path):
    out = tmp_path / "report"
    page = write_report(rows, "## T\n\n- split: test\n\n| Model | fd |\n| --- | --- |\n| BaseModel | 1.0 |\n", out, "T")
    text = page.read_text()
    shown = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(shown) == sorted(p.name for p in out.glob("*.png"))
    assert set(shown) == {"curves_losses.png", "curves_metrics.png", "samples_BaseModel.png"}
    for name in shown:
        assert (out / name).is_file() and f"{name}: " in text  # each caption names its file
    assert "<td>BaseModel</td>" in text and "<li>split: test</li>" in text and "<h2>T</h2>" not in text
    assert "http" not in text  # nothing is fetched from the network


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (Debian: apt install chromium)")
@pytest.mark.integration
def test_report_html_renders_in_a_headless_browser(rows, tmp_path):
    page = write_report(rows, "## T\n\n| Model | fd |\n| --- | --- |\n| BaseModel | 1.0 |\n", tmp_path / "r", "T")
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels[:800].std() > 10  # the curves and the table drew something on the white page


@pytest.mark.integration
def test_a_grid_too_large_to_be_a_sample_grid_is_left_out_by_name(tmp_path, caplog):
    """A 30000 x 30000 PNG among a run's grids (a few KB on disk) stopped the report with PIL's decompression-bomb
    error; now it is left out of the contact sheet, named, and the other grids show."""
    from test_bad_inputs import huge_png

    run = fake_run(tmp_path / "run", 0.0, grids=2)
    huge_png(run / "samples" / "samples_0099.000kimg.png", 30000)
    sheet = contact_sheet(run, tmp_path / "sheet.png")
    assert sheet is not None and Image.open(sheet).width < 1000
    assert "samples_0099.000kimg.png left out of the contact sheet" in caplog.text
