"""Images/s of a whole Voice2FaceGAN training iteration (Gmain, Greg, Dmain, Dreg, EMA) at 64 px.

Compares the paper-width networks with the CPU-sized widths of `exp/baseline_cpu.yaml` in the same run, on CPU
and, where available, on CUDA (fp32 and bf16 autocast). Lazy regularisers run at their real intervals
(Greg every 4, Dreg every 16 iterations); the timed window of `--iters` iterations starts at iteration 1.

    python -m bench.train_step [--device cpu|cuda|all] [--batch 8] [--iters 8] [--frames 300]
"""

import argparse
import time

import torch
from lightning import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from lightning_modules.voice2face import Voice2FaceGAN

FEATURES, RES, CLASSES = 64, 64, 16

WIDTHS = {  # name -> (encoder, generator, discriminator) kwargs
    "paper": (
        {"embed_dim": 512, "widths": [64, 128, 256, 512]},
        {"w_dim": 512, "mapping_layers": 8, "channel_base": 16384, "channel_max": 512},
        {"channel_base": 16384, "channel_max": 512},
    ),
    "cpu": (
        {"embed_dim": 128, "widths": [16, 32, 64, 128]},
        {"w_dim": 128, "mapping_layers": 4, "channel_base": 1024, "channel_max": 64},
        {"channel_base": 1024, "channel_max": 64},
    ),
}


class RandomBatches(Dataset):
    def __init__(self, n, frames):
        self.n, self.frames = n, frames

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {
            "audio": torch.randn(FEATURES, self.frames),
            "audio_lengths": torch.tensor(self.frames),
            "face": torch.rand(3, RES, RES) * 2 - 1,
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


def images_per_second(width, device, batch, iters, frames, bf16):
    enc, gen, dis = WIDTHS[width]
    torch.manual_seed(0)
    model = Voice2FaceGAN(
        encoder={"_target_": "lightning_modules.audio_encoder.AudioEncoder", **enc},
        generator={"_target_": "lightning_modules.stylegan2.Generator", **gen},
        discriminator={"_target_": "lightning_modules.stylegan2.Discriminator", **dis},
        num_classes=CLASSES,
        feature_dim=FEATURES,
        img_resolution=RES,
        sample_every_kimg=0, sample_count=0,
        bf16=bf16,
    )
    timer = Timer(skip=1)
    trainer = Trainer(
        accelerator=device,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader(RandomBatches(batch * (iters + 1), frames), batch_size=batch))
    return batch * iters / (timer.end - timer.start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300, help="audio frames per crop (300 = 3 s)")
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for bf16 in [False, True] if device == "cuda" else [False]:
            for width in WIDTHS:
                ips = images_per_second(width, device, args.batch, args.iters, args.frames, bf16)
                rows.append((device, "bf16" if bf16 else "fp32", width, ips))
    print(
        f"\nbatch {args.batch}, {args.iters} timed iterations, {args.frames} audio frames, 64 px, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'device':<7}{'precision':<11}{'width':<7}{'images/s':>10}{'vs paper':>10}")
    for device, precision, width, ips in rows:
        paper = next(r[3] for r in rows if r[:2] == (device, precision) and r[2] == "paper")
        print(f"{device:<7}{precision:<11}{width:<7}{ips:>10.1f}{ips / paper:>9.1f}x")


if __name__ == "__main__":
    main()
