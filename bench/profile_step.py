"""Where the time of a real training run goes: `+exp=baseline_cpu` (or any experiment) on the embedded corpus.

Runs `experiments.run.train` with the composed config for `--kimg` thousand images and times every part of an
iteration by wrapping the methods that do it (data loading and collation, the voice encoder, each training
phase, the EMA, logging, sample grids, checkpoints, in-training metrics). What the wrapped parts do not cover is
Lightning's loop and the rest, reported as `other`. The first `--warmup` iterations are not counted.

    python -m bench.profile_step [--kimg 1.5] [--warmup 4] [overrides ...]
    python -m bench.profile_step +exp=baseline_cpu model.encoder_mode=joint   # e.g. one recipe lever off
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import compose_train  # noqa: E402  (the tests' composer: the real config tree)

import datamodules.items as items  # noqa: E402
import datamodules.sources as sources  # noqa: E402
import lightning_modules.callbacks.checkpoint as callbacks  # noqa: E402
import lightning_modules.callbacks.samples as samples  # noqa: E402
import lightning_modules.metrics.callback as metrics_callback  # noqa: E402
import lightning_modules.voice2face as voice2face  # noqa: E402
from experiments.run import train  # noqa: E402


class Timers:
    """Seconds per named part, counted only while `on` (after the warm-up iterations). A timed part called inside
    another (the voice encoder inside the in-training metrics) is charged to the outer one only, so the parts add
    up to no more than the wall time."""

    def __init__(self):
        self.total, self.calls, self.on = collections.Counter(), collections.Counter(), False
        self.iter_start, self.iterations, self.images, self.wall = None, 0, 0, 0.0
        self.depth = 0  # timed parts open right now

    def wrap(self, owner, name, label):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start, outer = time.perf_counter(), self.depth == 0
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.on and outer:
                    self.total[label] += time.perf_counter() - start
                    self.calls[label] += 1

        setattr(owner, name, timed)


def install(timers: Timers, warmup: int) -> None:
    parts = [
        (sources.ShardVoices, "__getitem__", "data: read items"),
        (items.TrainCollate, "__call__", "data: collate"),
        (voice2face.Voice2FaceGAN, "embed", "voice encoder"),
        (voice2face.Voice2FaceGAN, "_phase_Gmain", "Gmain"),
        (voice2face.Voice2FaceGAN, "_phase_Greg", "Greg (path length)"),
        (voice2face.Voice2FaceGAN, "_phase_Dmain", "Dmain"),
        (voice2face.Voice2FaceGAN, "_phase_Dreg", "Dreg (R1)"),
        (voice2face.Voice2FaceGAN, "update_ema", "EMA"),
        (voice2face.Voice2FaceGAN, "log_dict", "logging"),
        (samples.SampleGrids, "save", "sample grids"),
        (callbacks.KimgCheckpoint, "save", "checkpoints"),
        (metrics_callback.MetricsCallback, "run", "in-training metrics"),
    ]
    for owner, name, label in parts:
        if hasattr(owner, name):
            timers.wrap(owner, name, label)

    step = voice2face.Voice2FaceGAN.training_step

    def counted_step(self, batch, batch_idx):
        now = time.perf_counter()
        if self.iteration == warmup:
            timers.on, timers.iter_start = True, now
        out = step(self, batch, batch_idx)
        if timers.on:
            timers.iterations += 1
            timers.images += batch["face"].shape[0]
        return out

    voice2face.Voice2FaceGAN.training_step = counted_step
    end = voice2face.Voice2FaceGAN.on_train_end

    def stop_clock(self):
        out = end(self)  # the final sample grid is part of the run
        if timers.iter_start is not None:
            timers.wall = time.perf_counter() - timers.iter_start
        return out

    voice2face.Voice2FaceGAN.on_train_end = stop_clock


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kimg", type=float, default=1.5, help="training length in thousands of images")
    ap.add_argument("--warmup", type=int, default=4, help="iterations before the clock starts")
    args, overrides = ap.parse_known_args()
    overrides = overrides or ["+exp=baseline_cpu"]
    timers = Timers()
    install(timers, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(
            [
                *overrides,
                f"model.total_kimg={args.kimg}",
                "evaluate=false",
                "logger=csv",
                f"paths.root_dir={ROOT}",
                "callbacks.rich_progress_bar=null",
            ],
            Path(tmp) / "run",
        )
        train(cfg)
    wall, n = timers.wall, max(timers.iterations, 1)
    covered = sum(timers.total.values())
    print(
        f"\n{' '.join(overrides)}: {timers.iterations} timed iterations, {timers.images} images, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'part':<24}{'ms / iteration':>16}{'share':>8}")
    for label, seconds in sorted(timers.total.items(), key=lambda kv: -kv[1]):
        print(f"{label:<24}{1000 * seconds / n:>16.1f}{seconds / wall:>8.0%}")
    print(f"{'other (loop, Lightning)':<24}{1000 * (wall - covered) / n:>16.1f}{(wall - covered) / wall:>8.0%}")
    print(f"{'whole iteration':<24}{1000 * wall / n:>16.1f}{1:>8.0%}")
    print(f"images/s {timers.images / wall:.1f}")


if __name__ == "__main__":
    main()
