"""Generator and discriminator forward+backward throughput (images/s) at 64 px, batch 8.

    python bench/networks.py [--batch 8] [--reps 5] [--device cpu|cuda] [--impl torch]

Rows: the StyleGAN2 G and D (with the identity head) at the paper's width (channel_base 16384,
channel_max 512) and at a CPU-sized width (2048, 128), StyleGAN (v1) G, and the DCGAN G and D, which are the
baseline the `vs DCGAN` column divides by. Each step is one forward and one backward (G: mean square of the
image; D: sum of the real/fake logits plus the identity cross-entropy), as in a training step. `--impl`
picks the kernels path (torch = the PyTorch reference; auto = Triton on CUDA).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.nets.baselines import DCGANDiscriminator, DCGANGenerator, StyleGAN1Generator  # noqa: E402
from lightning_modules.nets.stylegan2 import Discriminator, Generator  # noqa: E402

RES, Z_DIM, NUM_CLASSES = 64, 512, 924
WIDTHS = {"paper": dict(channel_base=16384, channel_max=512), "cpu": dict(channel_base=2048, channel_max=128)}


def g_step(G, batch, device):
    z = torch.randn(batch, Z_DIM, device=device)
    G(z).square().mean().backward()


def d_step(D, batch, device):
    img = torch.randn(batch, 3, RES, RES, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    logits, class_logits = D(img)
    (logits.sum() + torch.nn.functional.cross_entropy(class_logits, labels)).backward()


def images_per_second(step, net, batch, device, reps):
    step(net, batch, device)  # warm-up (allocations, kernel compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(net, batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]  # median step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impl", default="torch", choices=["torch", "auto", "triton"])
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    nets = [
        ("DCGAN G", "reference", g_step, DCGANGenerator(z_dim=Z_DIM, img_resolution=RES)),
        ("DCGAN D", "reference", d_step, DCGANDiscriminator(img_resolution=RES, num_classes=NUM_CLASSES)),
    ]
    for width, kw in WIDTHS.items():
        nets += [
            ("StyleGAN2 G", width, g_step, Generator(z_dim=Z_DIM, img_resolution=RES, impl=args.impl, **kw)),
            (
                "StyleGAN2 D",
                width,
                d_step,
                Discriminator(img_resolution=RES, num_classes=NUM_CLASSES, impl=args.impl, **kw),
            ),
            (
                "StyleGAN G",
                width,
                g_step,
                StyleGAN1Generator(z_dim=Z_DIM, img_resolution=RES, impl=args.impl, **kw),
            ),
        ]
    print(
        f"{RES} px, batch {args.batch}, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"kernels impl {args.impl}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"| {'network':<12} | {'width':<9} | {'params (M)':>10} | {'img/s fwd+bwd':>13} | {'vs DCGAN':>8} |")
    print(f"|{'-' * 14}|{'-' * 11}|{'-' * 12}|{'-' * 15}|{'-' * 10}|")
    baseline = {}
    for name, width, step, net in nets:
        net = net.to(device)
        rate = images_per_second(step, net, args.batch, device, args.reps)
        kind = name[-1]  # G or D: compare like with like
        baseline.setdefault(kind, rate)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"| {name:<12} | {width:<9} | {params:>10.2f} | {rate:>13.1f} | {rate / baseline[kind]:>8.2f} |")
        del net


if __name__ == "__main__":
    main()
