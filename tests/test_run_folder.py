"""A run folder loses nothing: one run at a time holds it, a resume keeps the earlier config.yaml and appends to
metrics.csv, and a checkpoint save that fails leaves the previous checkpoint and no temporary file."""

from __future__ import annotations

import csv
import os
import types
from pathlib import Path

import pytest

from experiments.run import check_fresh_folder, run_folder, save_config, train
from lightning_modules.callbacks.checkpoint import KimgCheckpoint
from lightning_modules.callbacks.csv_logger import AppendingCSVLogger

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_run_into_a_held_folder_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg("+exp=smoke", "logger=none")
    out = tmp_path / "run"
    with run_folder(out):
        with pytest.raises(BlockingIOError, match=rf"run folder {out} is in use by pid \d+"):
            train(cfg)
    assert not (out / "checkpoints").exists()  # refused before anything was written
    with run_folder(out):  # free again once the first run ended
        pass


@pytest.mark.parametrize(
    "left, fix",
    [
        ("checkpoints/last.ckpt", "resume it with ckpt_path={out}/checkpoints/last.ckpt"),
        ("checkpoints/snapshot-000.050kimg.ckpt", "resume it with ckpt_path={out}/checkpoints/snapshot-000.050kimg"),
        ("csv/metrics.csv", "it left no checkpoint to resume from"),
        ("stage1/csv/metrics.csv", "it stopped in stage 1, which keeps nothing to resume from: remove {out}/stage1"),
    ],
)
def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(compose_cfg, tmp_path, left, fix):
    """What the refusal advises is there: a run killed in stage 1 was told to resume from a last.ckpt it never
    wrote."""
    out = tmp_path / "run"
    (out / left).parent.mkdir(parents=True)
    (out / left).write_bytes(b"the earlier run")
    with pytest.raises(
        FileExistsError, match=rf"run folder {out} already holds an earlier run .*{fix.format(out=out)}"
    ):
        train(compose_cfg("+exp=smoke", "logger=none"))
    assert (out / left).read_bytes() == b"the earlier run"
    assert sorted(p.name for p in out.iterdir()) == [".run.lock", left.split("/")[0]]  # no config.yaml either


def test_a_stage1_encoder_of_an_earlier_run_is_not_reused(compose_cfg, tmp_path):
    """pretrain_encoder takes <run>/stage1/encoder.pt as this run's own: only a resume of that run may."""
    out = tmp_path / "run"
    (out / "stage1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="stage1"):
        check_fresh_folder(compose_cfg("+exp=smoke"), out, None)
    check_fresh_folder(compose_cfg("+exp=smoke"), out, str(out / "checkpoints" / "last.ckpt"))  # resumes it
    with pytest.raises(FileExistsError, match="stage1"):  # resuming another run here would mix the two
        check_fresh_folder(compose_cfg("+exp=smoke"), out, str(tmp_path / "other" / "checkpoints" / "last.ckpt"))


def test_each_session_keeps_its_config(compose_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for seed in (1, 2, 3):
        save_config(compose_cfg("+exp=smoke", f"seed={seed}"), out)
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert "seed: 1" in (out / "config.1.yaml").read_text() and "seed: 2" in (out / "config.2.yaml").read_text()


def test_a_gap_in_the_kept_configs_replaces_none(compose_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 3\n")
    (out / "config.2.yaml").write_text("seed: 2\n")  # config.1.yaml deleted by hand
    save_config(compose_cfg("+exp=smoke", "seed=4"), out)
    assert (out / "config.2.yaml").read_text() == "seed: 2\n" and (out / "config.3.yaml").read_text() == "seed: 3\n"


def test_a_resumed_logger_appends_to_metrics_csv(tmp_path):
    first = AppendingCSVLogger(str(tmp_path), name="csv", version="")
    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    second = AppendingCSVLogger(str(tmp_path), name="csv", version="")  # a resume into the same folder
    second.log_metrics({"loss": 0.5, "val/fd_probe": 9.0}, step=1)  # with a column the first session lacked
    second.save()
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    assert [(r["step"], r["loss"], r["val/fd_probe"]) for r in rows] == [("0", "1.0", ""), ("1", "0.5", "9.0")]


def test_curves_of_a_resumed_log_do_not_double_back(tmp_path):
    """Killed at 3 kimg after a checkpoint at 2, resumed: the log holds 2.5 and 3 twice, and the curve went back."""
    from experiments.curves import read_curves

    (tmp_path / "csv").mkdir()
    rows = [(1, 10, 9.0), (2, 20, 8.0), (2.5, 25, 7.5), (3, 30, 7.0), (2.5, 26, 7.4), (3, 31, 6.9), (4, 41, 6.0)]
    lines = ["step,progress/kimg,perf/train_s,val/fd_probe,loss", "0,1,10,,0.5"]  # a row without the key
    lines += [f"{i},{k},{t},{v}," for i, (k, t, v) in enumerate(rows, start=1)]
    (tmp_path / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    curve = read_curves(tmp_path, ["val/fd_probe"])["val/fd_probe"]
    assert curve == [(1, 10, 9.0), (2, 20, 8.0), (2.5, 26, 7.4), (3, 31, 6.9), (4, 41, 6.0)]


@pytest.mark.integration
def test_the_curves_command_plots_a_run_and_refuses_none(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.curves import plot, run

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("progress/kimg,perf/train_s,val/fd_probe\n1,10,2.0\n2,20,1.5\n")
    with initialize_config_dir(str(ROOT / "experiments" / "conf"), version_base="1.3"):
        cfg = compose("curves", [f"runs=[{tmp_path}]", "labels=[a]", f"out={tmp_path / 'c.png'}"])
        empty = compose("curves")
    assert run(cfg).is_file()  # was TypeError: 'method' object is not iterable (cfg.keys)
    with pytest.raises(ValueError, match=r"config: runs: \[\] should be non-empty"):
        run(empty)  # wrote an empty figure
    with pytest.raises(ValueError, match=r"curves: no runs or no keys given; pass runs="):
        plot([], [], ["val/fd_probe"], tmp_path / "c.png")


def test_a_log_cell_that_is_not_a_number_is_named(tmp_path):
    from experiments.curves import read_curves

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("progress/kimg,perf/train_s,val/fd_probe\n1,10,2.0\n2,20,abc\n")
    with pytest.raises(ValueError, match=r"metrics.csv: line 3: not a number .*'abc'"):
        read_curves(tmp_path, ["val/fd_probe"])


def test_a_failed_checkpoint_save_leaves_the_previous_one(tmp_path):
    callback = KimgCheckpoint(str(tmp_path))
    previous = tmp_path / "last.ckpt"
    previous.write_bytes(b"the previous checkpoint")

    def full_disk(path, weights_only=None):
        open(path, "wb").write(b"half a checkpo")
        raise OSError(28, "No space left on device")

    trainer = types.SimpleNamespace(
        is_global_zero=True, save_checkpoint=full_disk, strategy=types.SimpleNamespace(barrier=lambda name: None)
    )
    with pytest.raises(OSError, match="No space left"):
        callback.save(trainer, "last.ckpt")
    assert previous.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_user_errors_end_as_one_line(tmp_path, capsys, monkeypatch):
    """A command's own error message, prefixed, on one line and exit status 1; the traceback under
    VOICE2FACE_DEBUG=1; a programming error is not dressed up."""
    from datamodules.cli_errors import one_line_errors

    @one_line_errors
    def command(error):
        raise error

    with pytest.raises(SystemExit) as stop:
        command(FileNotFoundError(f"{tmp_path / 'x.wav'}: no such audio file or folder"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"voice2face: {tmp_path / 'x.wav'}: no such audio file") and "Traceback" not in err
    with pytest.raises(SystemExit):
        command(OSError(28, "No space left on device", str(tmp_path / "a.png")))
    assert "a.png: the disk is full" in capsys.readouterr().err
    with pytest.raises(TypeError):
        command(TypeError("a bug"))
    monkeypatch.setenv("VOICE2FACE_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        command(ValueError("bad"))


def test_temporaries_of_killed_saves_are_removed(tmp_path):
    """A process killed inside write_atomic (kill -9 while a checkpoint is saved) leaves its temporary; the next
    save of that file removes it, and leaves those of live processes and of other files."""
    import os
    import subprocess
    import sys

    from datamodules.files import remove_dead_temporaries

    target = tmp_path / "last.ckpt"
    killed = (
        "import os, pathlib; from datamodules.files import write_atomic; "
        f"write_atomic(pathlib.Path({str(target)!r}), lambda t: (t.write_bytes(b'half'), os.kill(os.getpid(), 9)))"
    )
    assert subprocess.run([sys.executable, "-c", killed], cwd=ROOT).returncode == -9
    (left,) = tmp_path.glob(".last.ckpt.tmp*")
    live = tmp_path / f".last.ckpt.tmp{os.getpid()}-3c4d"  # a save in progress
    live.write_bytes(b"saving")
    (tmp_path / ".snapshot.ckpt.tmp1-5e6f").write_bytes(b"another file's")
    remove_dead_temporaries(target)
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == [live.name, ".snapshot.ckpt.tmp1-5e6f"]


@pytest.mark.integration
def test_a_run_refused_before_it_starts_leaves_no_folder(tmp_path):
    """Hydra makes the run folder before the task starts: a refused generator_init left one holding only .hydra/
    and run.log. Preflight refuses the run first, in one line, and nothing is written."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "experiments.run", "+exp=prior_cpu", f"model.generator_init={tmp_path / 'moved.pkl'}"]
    out = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and f"voice2face: {tmp_path / 'moved.pkl'}: generator file not found" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "run_dir, reason",
    [
        ("x" * 300, r"a folder name of 300 bytes \(x{24}\.\.\.\) passes the file system's limit of 255"),
        ("a_file/run", "a_file is a file, not a folder"),
        ("read_only/run", "read_only is read-only for this user"),
    ],
)
def test_a_run_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch, run_dir, reason):
    """A 300-character or read-only hydra.run.dir ended in Hydra's traceback (File name too long)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from experiments.preflight import check

    (tmp_path / "a_file").touch()
    (tmp_path / "read_only").mkdir()
    writable = os.access  # read-only by os.access: the tests may run as root, who writes anywhere
    monkeypatch.setattr(os, "access", lambda p, mode: "read_only" not in str(p) and writable(p, mode))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        config = compose("train", ["+exp=smoke", f"hydra.run.dir={tmp_path / run_dir}"], return_hydra_config=True)
    HydraConfig().set_config(config)
    with pytest.raises(OSError, match=f"hydra.run.dir={tmp_path / run_dir}: cannot be made \\((.*/)?{reason}"):
        check(config)
    OmegaConf.set_readonly(config.hydra, False)
    config.hydra.run.dir = str(tmp_path / "fine" / "run")
    check(config)  # the same settings into a folder that can be made pass, and nothing is made
    GlobalHydra.instance().clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "read_only"]
