"""Peak memory of one training iteration's heaviest phases at the paper's resolutions, on this machine's CPU.

For each resolution, the networks of the FFHQ configs (NVlabs config-f widths: channel_base 32768, channel_max
512, an 8-layer mapping, w 512, conv_clamp 256) with the W+ voice head, and one micro-batch of B images through
Gmain (G -> D -> backward into G and the head), Dmain (D on real and fake, backward), the R1 penalty (a double
backward through D) and the path-length penalty (a double backward through G). Each (resolution, B) runs in its
own process, so its peak resident set is its own; the memory per image is the slope between B = 1 and B = 2, and
the fixed part (weights and gradients, no optimizer state) is what remains.
The 64 px row, the paper's from-scratch size at the same widths, is the baseline of the ratio column.

    python -m bench.hires_memory [--resolutions 64 256 1024] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lightning_modules.losses import ns_discriminator_loss, ns_generator_loss, path_lengths, r1_penalty
from lightning_modules.nets.latent import VoiceLatent
from lightning_modules.nets.stylegan2 import Discriminator, Generator

WIDTHS = dict(channel_base=32768, channel_max=512, conv_clamp=256)  # NVlabs' FFHQ config-f


def one_iteration(res: int, batch: int) -> dict:
    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, mapping_layers=8, impl="torch", **WIDTHS)
    G.mapping = VoiceLatent(G.mapping.requires_grad_(False), 512, "wplus")
    D = Discriminator(img_resolution=res, num_classes=924, impl="torch", **WIDTHS)
    voice, real = torch.randn(batch, 512), torch.rand(batch, 3, res, res) * 2 - 1
    start = time.perf_counter()
    logits, _ = D(G.synthesis(G.mapping(voice)))
    ns_generator_loss(logits).mean().backward()  # Gmain
    with torch.no_grad():
        fake = G.synthesis(G.mapping(voice))
    loss_real, loss_fake = ns_discriminator_loss(D(real)[0], D(fake)[0])
    (loss_real.mean() + loss_fake.mean()).backward()  # Dmain
    real.requires_grad_(True)
    r1_penalty(real, D(real)[0]).mean().backward()  # Dreg: double backward
    ws = G.mapping(voice)
    path_lengths(G.synthesis(ws), ws).mean().backward()  # Greg (NVlabs runs it on half the batch): double backward
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return {"res": res, "batch": batch, "peak_gib": peak_gib, "seconds": seconds, "num_ws": G.num_ws}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_iteration(*args.child)))
        return
    rows = []
    for res in args.resolutions:
        runs = []
        for batch in (1, 2):
            out = subprocess.run(
                [sys.executable, "-m", "bench.hires_memory", "--child", str(res), str(batch)],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        per_image = runs[1]["peak_gib"] - runs[0]["peak_gib"]
        rows.append((res, runs[0]["num_ws"], per_image, runs[0]["peak_gib"] - per_image, runs[1]["seconds"] / 2))
    base = rows[0][2]
    lines = [
        f"CPU ({torch.get_num_threads()} threads), one Gmain + Dmain + R1 + path-length micro-step, W+ head, "
        "config-f widths",
        "",
        "| resolution | ws | GiB per image | fixed GiB | s per image | per-image ratio to the first row |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for res, num_ws, per_image, fixed, seconds in rows:
        ratio = per_image / base if base > 0 else float("nan")
        lines.append(f"| {res} | {num_ws} | {per_image:.2f} | {fixed:.2f} | {seconds:.1f} | {ratio:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
