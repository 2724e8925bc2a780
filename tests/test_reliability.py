"""Faults during training: non-finite steps are skipped and counted and stop the run with a checkpoint; checkpoints
open as data only; a resume (clean, or after kill -9) ends bit-identical to a run that never stopped; DDP on two CPU
processes through the CLI keeps every rank's networks identical."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import lightning_modules.voice2face as v2f
import lightning_modules.voice2face_loss as v2f_loss
from experiments.run import train

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32  # 7 batches an epoch on the embedded corpus: the runs below cross epoch boundaries
FAST = [
    "+exp=smoke",
    "evaluate=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.lr_monitor=null",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    f"data.batch_size={BATCH}",
    "callbacks.samples.every_kimg=0",
    "trainer.deterministic=true",
]


def kimg(iterations: int) -> str:
    return f"model.total_kimg={iterations * BATCH / 1000}"


def run(compose_cfg, out: Path, iterations: int, *extra: str):
    cfg = compose_cfg(*FAST, "logger=none", kimg(iterations), *extra)
    cfg.paths.output_dir = str(out)
    return train(cfg)[1]


def params(state: dict, prefixes=("G.", "D.", "encoder.")) -> dict:
    """The trained weights (not buffers such as BatchNorm statistics, which every forward pass updates)."""
    return {k: v.clone() for k, v in state.items() if k.startswith(prefixes) and k in PARAMETER_NAMES}


PARAMETER_NAMES: set[str] = set()


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


class NaNLosses:
    """Makes the G and/or D losses NaN at chosen iterations (patched into voice2face_loss's loss names)."""

    def __init__(self, monkeypatch, bad_iterations, phases=("G", "D")):
        self.bad, self.model, self.snapshots = set(bad_iterations), None, {}
        g, d = v2f_loss.ns_generator_loss, v2f_loss.ns_discriminator_loss
        step = v2f.Voice2FaceGAN.training_step

        def training_step(model, batch, batch_idx):
            self.model = model
            PARAMETER_NAMES.update(name for name, _ in model.named_parameters())
            self.snapshots[model.iteration] = params(model.state_dict())
            return step(model, batch, batch_idx)

        def poison(x):
            return x * float("nan") if self.model.iteration in self.bad else x

        monkeypatch.setattr(v2f.Voice2FaceGAN, "training_step", training_step)
        if "G" in phases:
            monkeypatch.setattr(v2f_loss, "ns_generator_loss", lambda logits: poison(g(logits)))
        if "D" in phases:
            monkeypatch.setattr(v2f_loss, "ns_discriminator_loss", lambda r, f: tuple(map(poison, d(r, f))))


@pytest.mark.integration
def test_non_finite_step_is_skipped_counted_and_logged(compose_cfg, tmp_path, monkeypatch):
    nan = NaNLosses(monkeypatch, bad_iterations={1}, phases=("G",))
    cfg = compose_cfg(*FAST, "logger=csv", kimg(3), "++model.max_bad_steps=2", "trainer.log_every_n_steps=1")
    model = train(cfg)[1]["model"]
    assert model.skipped_steps == 1 and model.iteration == 3
    # Iteration 1's Gmain was skipped (and Greg only runs at 0): G and the encoder did not move, D did.
    before, after = nan.snapshots[1], nan.snapshots[2]
    assert_same(params(before, ("G.", "encoder.")), params(after, ("G.", "encoder.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("D."))
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    logged = [float(r["progress/skipped_steps"]) for r in rows if r.get("progress/skipped_steps")]
    assert logged and max(logged) == 1


@pytest.mark.integration
def test_consecutive_bad_steps_stop_with_last_good_checkpoint(compose_cfg, tmp_path, monkeypatch):
    nan = NaNLosses(monkeypatch, bad_iterations=range(2, 100))
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row.*last-good.ckpt.*ckpt_path="):
        run(compose_cfg, tmp_path / "run", 10, "++model.max_bad_steps=3")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last-good.ckpt", weights_only=True)
    assert saved["voice2face_skipped_steps"] == 3
    assert_same(params(saved["state_dict"]), nan.snapshots[2])  # the weights before the first bad step


@pytest.mark.parametrize("data", ["embedded", "embedded_stream"])
@pytest.mark.integration
def test_resume_after_clean_stop_is_bit_identical(compose_cfg, tmp_path, data):
    """N iterations, stop, resume to 2N == 2N straight (RNG streams, data position, optimisers, counters); for
    the litdata stream the position comes back through its loader's state in the checkpoint."""
    straight = run(compose_cfg, tmp_path / "straight", 8, f"data={data}")["trainer"]
    run(compose_cfg, tmp_path / "first", 4, f"data={data}")
    first_ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = run(compose_cfg, tmp_path / "resumed", 8, f"data={data}", f"ckpt_path={first_ckpt}")["trainer"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert_same(a["state_dict"], b["state_dict"])  # G, D, G_ema, encoder, pl_mean, BN statistics
    assert_same(flat(a["optimizer_states"]), flat(b["optimizer_states"]))
    assert counters(a) == counters(b)
    assert straight.lightning_module.cur_nimg == resumed.lightning_module.cur_nimg == 8 * BATCH


@pytest.mark.integration
def test_the_resume_callback_must_come_before_the_checkpoints(compose_cfg, tmp_path):
    """After the checkpoint callback, a last.ckpt written at a batch's end would not count that batch."""
    from omegaconf import open_dict

    cfg = compose_cfg(*FAST, "logger=none", kimg(2))
    with open_dict(cfg):
        resume = cfg.callbacks.pop("resume")
        cfg.callbacks.resume = resume  # now last in the list
    with pytest.raises(ValueError, match="ExactResume must come before KimgCheckpoint.*list `resume` first"):
        train(cfg)


def counters(ckpt) -> dict:
    """The checkpoint's progress without its wall-clock train_seconds (the one field a rerun may not repeat)."""
    progress = dict(ckpt["voice2face_progress"])
    assert progress.pop("train_seconds") >= 0
    return progress


def flat(tree, prefix="") -> dict:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}/{k}"))
    return out


@pytest.mark.integration
def test_checkpoint_opens_as_data_and_holds_the_full_state(compose_cfg, tmp_path):
    run(compose_cfg, tmp_path / "run", 2)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert {"pl_mean"} <= keys and any(k.startswith("G_ema.") for k in keys)
    assert len(ckpt["optimizer_states"]) == 2  # G (+ encoder) and D
    assert ckpt["voice2face_progress"]["iteration"] == 2 and ckpt["voice2face_format"] == v2f.CHECKPOINT_FORMAT
    resume = ckpt["callbacks"]["ExactResume"]
    assert {"train_rng", "epoch_rng", "data_rng", "batches_done"} <= resume.keys()
    assert isinstance(ckpt["hyper_parameters"]["generator"], dict)  # plain types, no DictConfig


# ---------------------------------------------------------------------------------------------------- kill -9
def cli(run_dir: Path, iterations: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.run",
        *FAST,
        "logger=none",
        kimg(iterations),
        f"hydra.run.dir={run_dir}",
        "++callbacks.checkpoint.last_every_kimg=0.001",
        *extra,
    ]


def ckpt_version(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("data", ["embedded", "embedded_stream"])
def test_kill_9_at_random_iterations_then_resume_is_bit_identical(tmp_path, data):
    iterations, rng = 20, random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        cli(tmp_path / "straight", iterations, f"data={data}"), cwd=ROOT, env=env, check=True, capture_output=True
    )

    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    kills = 0
    while True:
        resume = [f"ckpt_path={last}"] if last.exists() else []
        errors = tmp_path / f"run{kills}.err"  # the last run's own error, if it fails
        proc = subprocess.Popen(
            cli(tmp_path / "killed", iterations, f"data={data}", *resume),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors.open("w"),
        )
        writes, seen, target = 0, ckpt_version(last), rng.randint(1, 4)
        while proc.poll() is None and (kills >= 5 or writes < target):
            time.sleep(0.02)
            if (now := ckpt_version(last)) != seen:
                writes, seen = writes + 1, now
        if proc.poll() is None:
            time.sleep(rng.uniform(0, 0.3))  # somewhere inside the next iteration (or checkpoint write)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, f"after {kills} kills: {errors.read_text()[-3000:]}"
        break
    assert kills >= 5
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert counters(a) == counters(b)
    assert_same(a["state_dict"], b["state_dict"])
    assert_same(flat(a["optimizer_states"]), flat(b["optimizer_states"]))
    print(f"kills={kills} iterations={iterations}")


# ---------------------------------------------------------------------------------------------------- DDP
class RankStateDump(Callback):
    """Writes each rank's G and D weights at the end of training (used by the DDP test via a config override)."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in pl_module.state_dict().items() if k.startswith(("G.", "D.", "G_ema."))}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("data", ["embedded", "embedded_stream"])
@pytest.mark.integration
def test_ddp_two_cpu_processes_keep_ranks_identical(tmp_path, data):
    dump = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        *FAST,
        "logger=none",
        kimg(3),
        "trainer=ddp_sim",
        f"data={data}",
        "data.batch_size=16",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.rank_dump._target_=test_reliability.RankStateDump",
        f"+callbacks.rank_dump.out={dump}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}  # finds RankStateDump
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if re.match(r"^\w+(Error|Exception)\b", line)]
    assert out.returncode == 0, "\n".join([out.stderr[-3000:], "every rank's error:", *errors])
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0) > 50
    assert_same(r0, r1)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["voice2face_progress"]["cur_nimg"] == 3 * 16 * 2  # global batch = per-rank batch x 2 ranks


def test_bad_steps_error_says_whether_a_state_was_saved(tmp_path):
    from lightning_modules.callbacks.checkpoint import BadStepsError

    err = BadStepsError("voice2face: 3 optimizer steps in a row were bad; stopped.", "Lower model.lr")
    assert "No checkpoint callback ran, so no state was saved. Lower model.lr." in str(err)
    err.checkpoint = tmp_path / "last-good.ckpt"
    assert str(err).endswith(f"Lower model.lr, then resume with ckpt_path={tmp_path / 'last-good.ckpt'}.")


@pytest.mark.integration
def test_a_run_resumes_after_its_generator_file_moved(compose_cfg, tmp_path):
    """model.generator_init is read when the run begins; its G and D are in every checkpoint after that. Once the
    file was moved the run could not be resumed at all ("generator file not found"): the checkpoint stands in for
    it, and the resumed run ends bit-identical to one that never stopped."""
    import shutil

    run(compose_cfg, tmp_path / "prior", 2)
    init = tmp_path / "prior.ckpt"
    shutil.copy(tmp_path / "prior" / "checkpoints" / "last.ckpt", init)
    frozen = [f"model.generator_init={init}", "model.generator_train=frozen"]
    run(compose_cfg, tmp_path / "straight", 6, *frozen)
    run(compose_cfg, tmp_path / "first", 3, *frozen)
    init.rename(tmp_path / "moved.ckpt")
    first_ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose_cfg, tmp_path / "resumed", 6, *frozen, f"ckpt_path={first_ckpt}")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert_same(a["state_dict"], b["state_dict"])
    assert_same(flat(a["optimizer_states"]), flat(b["optimizer_states"]))
    assert b["hyper_parameters"]["generator_init"] == str(init)  # the file the run began from, not the stand-in
    with pytest.raises(FileNotFoundError, match=f"{init}: generator file not found"):
        run(compose_cfg, tmp_path / "fresh", 6, *frozen)  # a run that begins still needs the file
