"""Images/s of a whole Voice2FaceGAN training iteration (Gmain, Greg, Dmain, Dreg, EMA), networks and training
settings composed from the real experiment configs, on random data of the experiment's batch and face size.

Each variant is a list of config overrides (default: the `make run` recipe before the recipe study, today's
`+exp=baseline_cpu` at 64 px and at its own 32 px, and the paper's `+exp=baseline`); all run in the same process,
and the table prints each one's ratio to the first CPU row. Lazy regularisers run at their real intervals; the
timed window of `--iters` iterations starts after one warm-up iteration. A frozen encoder (`encoder_mode=frozen`)
is given random weights here.

    python -m bench.train_step [--device cpu|cuda|all] [--iters 8] [--frames 400]
                               [--variant 'name=+exp=baseline_cpu model.xflip=true' ...]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from lightning import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import compose_train  # noqa: E402  (the tests' composer: the real config tree)

FEATURES, CLASSES = 64, 75
VARIANTS = {  # name -> overrides; ratios are to the first: the make-run recipe before the study (docs/recipe.md)
    "previous cpu": "+exp=baseline_cpu data.face_size=64 model.encoder.stem_pool=false model.generator.use_noise=true "
                    "model.r1_gamma=10 model.lr=0.0002 model.betas=[0.5,0.999] model.style_mixing_prob=0.9 "
                    "model.recon_weight=0 model.xflip=false",
    "cpu at 64 px": "+exp=baseline_cpu data.face_size=64 model.r1_gamma=0.0256",
    "cpu": "+exp=baseline_cpu",
    "paper": "+exp=baseline",
}


class RandomBatches(Dataset):
    def __init__(self, n, frames, res):
        self.n, self.frames, self.res = n, frames, res

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {
            "audio": torch.randn(FEATURES, self.frames),
            "audio_lengths": torch.tensor(self.frames),
            "face": torch.rand(3, self.res, self.res) * 2 - 1,
            "label": torch.tensor(i % CLASSES),
        }


class Timer(Callback):
    def __init__(self, skip):
        self.skip, self.start, self.end = skip, None, None

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.end = time.perf_counter()


def build(overrides: str, tmp: Path, bf16: bool):
    """(model, batch size, face size) of an experiment, as experiments.run would build them."""
    cfg = compose_train(shlex.split(overrides), tmp / "run")
    encoder_file = None
    if cfg.model.encoder_mode != "joint":  # a frozen / fine-tuned encoder needs a file: random weights
        from lightning_modules.encoder_pretrain import EncoderPretrain

        encoder_file = tmp / "encoder.pt"
        EncoderPretrain(dict(cfg.model.encoder), num_classes=CLASSES, feature_dim=FEATURES).save_encoder(encoder_file)
    model = hydra.utils.instantiate(
        cfg.model, num_classes=CLASSES, feature_dim=FEATURES, img_resolution=cfg.data.face_size,
        encoder_ckpt=None if encoder_file is None else str(encoder_file), sample_every_kimg=0, sample_count=0,
        bf16=bf16, _recursive_=False)
    return model, cfg.data.batch_size, cfg.data.face_size


def images_per_second(overrides, device, iters, frames, bf16):
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model, batch, res = build(overrides, Path(tmp), bf16)
        timer = Timer(skip=1)
        trainer = Trainer(accelerator=device, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
        trainer.fit(model, DataLoader(RandomBatches(batch * (iters + 1), frames, res), batch_size=batch))
    return batch, res, batch * iters / (timer.end - timer.start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--frames", type=int, default=400, help="audio frames per crop (400 = 4 s)")
    ap.add_argument("--variant", action="append", default=[], help="name=overrides (repeatable)")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or VARIANTS
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for bf16 in [False, True] if device == "cuda" else [False]:
            for name, overrides in variants.items():
                batch, res, ips = images_per_second(overrides, device, args.iters, args.frames, bf16)
                rows.append((device, "bf16" if bf16 else "fp32", name, batch, res, ips))
    print(f"\n{args.iters} timed iterations, {args.frames} audio frames, torch threads {torch.get_num_threads()}")
    base = next(r[5] for r in rows if r[0] == "cpu")
    print(f"{'device':<7}{'precision':<11}{'variant':<16}{'batch':>6}{'px':>5}{'images/s':>10}{'vs first cpu':>14}")
    for device, precision, name, batch, res, ips in rows:
        print(f"{device:<7}{precision:<11}{name:<16}{batch:>6}{res:>5}{ips:>10.1f}{ips / base:>13.2f}x")


if __name__ == "__main__":
    main()
