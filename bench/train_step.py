"""Images/s of a whole Voice2FaceGAN training iteration (Gmain, Greg, Dmain, Dreg, EMA), networks and training
settings composed from the real experiment configs, on random data of the experiment's batch and face size.

Each variant is a list of config overrides (default: the `make run` recipe before the recipe study, today's
`+exp=baseline_cpu` at 64 px and at its own 32 px, and the paper's `+exp=baseline`); all run in the same process,
and the table prints each one's ratio to the first CPU row. Lazy regularisers run at their real intervals; the
timed window of `--iters` iterations starts after one warm-up iteration. A frozen encoder (`encoder_mode=frozen`)
is given random weights here.

On CUDA every variant runs in float32 and bf16, and the paper's variant once more with the Triton kernels off
(`impl=torch` in G and D: NVlabs' non-fused PyTorch path), so "Triton on vs off" is read off the same run; peak
allocated memory is printed beside img/s.

    python -m bench.train_step [--device cpu|cuda|all] [--iters 8] [--frames 400] [--markdown FILE]
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
from lightning import Callback
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import compose_train, quiet_trainer  # noqa: E402  (the tests' composer and Trainer)

FEATURES, CLASSES = 64, 75
VARIANTS = {  # name -> overrides; ratios are to the first: the make-run recipe before the study (docs/recipe.md)
    "previous cpu": "+exp=baseline_cpu data.face_size=64 model.encoder.stem_pool=false model.generator.use_noise=true "
    "model.r1_gamma=10 model.lr=0.0002 model.betas=[0.5,0.999] model.style_mixing_prob=0.9 "
    "model.recon_weight=0 model.xflip=false",
    "cpu at 64 px": "+exp=baseline_cpu data.face_size=64 model.r1_gamma=0.0256",
    "cpu": "+exp=baseline_cpu",
    "paper": "+exp=baseline",
}
TRITON_OFF = "model.generator.impl=torch model.discriminator.impl=torch"  # appended for the CUDA-only row


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
        cfg.model,
        num_classes=CLASSES,
        feature_dim=FEATURES,
        img_resolution=cfg.data.face_size,
        encoder_ckpt=None if encoder_file is None else str(encoder_file),
        bf16=bf16,
        _recursive_=False,
    )
    return model, cfg.data.batch_size, cfg.data.face_size


def images_per_second(overrides, device, iters, frames, bf16):
    """(batch, face size, images/s, peak allocated GiB or None) of `iters` timed training iterations."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model, batch, res = build(overrides, Path(tmp), bf16)
        timer = Timer(skip=1)
        trainer = quiet_trainer(tmp, accelerator=device, callbacks=[timer])
        trainer.fit(model, DataLoader(RandomBatches(batch * (iters + 1), frames, res), batch_size=batch))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return batch, res, batch * iters / (timer.end - timer.start), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--frames", type=int, default=400, help="audio frames per crop (400 = 4 s)")
    ap.add_argument("--variant", action="append", default=[], help="name=overrides (repeatable)")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or VARIANTS
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        print("bench/train_step.py: unmeasured: no CUDA device on this machine.")
        return
    rows = []
    for device in devices:
        runs = dict(variants)
        if device == "cuda" and "paper" in runs:
            runs["paper, Triton off"] = f"{runs['paper']} {TRITON_OFF}"
        for bf16 in [False, True] if device == "cuda" else [False]:
            for name, overrides in runs.items():
                batch, res, ips, peak = images_per_second(overrides, device, args.iters, args.frames, bf16)
                rows.append((device, "bf16" if bf16 else "fp32", name, batch, res, ips, peak))
    first = rows[0]
    where = torch.cuda.get_device_name() if "cuda" in devices else "CPU"
    lines = [
        f"{args.iters} timed iterations, {args.frames} audio frames, torch threads {torch.get_num_threads()}, "
        f"{where}; ratios to the first row ({first[0]} {first[1]} {first[2]})",
        "",
        "| device | precision | variant | batch | px | images/s | vs first | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for device, precision, name, batch, res, ips, peak in rows:
        memory = "-" if peak is None else f"{peak:.2f}"
        lines.append(
            f"| {device} | {precision} | {name} | {batch} | {res} | {ips:.1f} | {ips / first[5]:.2f}x | {memory} |"
        )
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
