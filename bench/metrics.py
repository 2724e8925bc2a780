"""Evaluation costs at the embedded corpus' scale, each against a baseline measured in the same run.

    python bench/metrics.py [--ids 48] [--faces 16] [--steps 300]

1. Fréchet distance of 2048-d statistics: torchmetrics (eigenvalues of Σ1Σ2, as our FID) vs scipy sqrtm
   (the torch-fidelity / NVlabs formula); both values are printed, they must agree.
2. Retrieval Recall@k (galleries of 10, 10 repeats): our vectorised ranking vs a per-query Python loop.
3. Attribute probe (train + score) on ids × faces 64 px faces vs the one-minute budget of the issue.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.faces import normalize
from lightning_modules.metrics.attributes import attribute_scores  # noqa: E402
from lightning_modules.metrics.identity import retrieval_recall  # noqa: E402
from lightning_modules.metrics.probe import train_probe  # noqa: E402


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def frechet_torchmetrics(mu1, s1, mu2, s2):
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(mu1, s1, mu2, s2))


def frechet_scipy(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def retrieval_loop(query, labels, centers, g, repeats, seed=0):
    rng = np.random.default_rng(seed)
    sim = (torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(centers, dim=1).T).numpy()
    hits = 0
    for _ in range(repeats):
        for i, y in enumerate(labels.tolist()):
            others = rng.choice([c for c in range(len(centers)) if c != y], g - 1, replace=False)
            hits += int((sim[i, others] >= sim[i, y]).sum() < 1)
    return hits / (repeats * len(labels))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=48)
    parser.add_argument("--faces", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    rows = []

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3000, 2048, generator=g, dtype=torch.float64) + s for s in (0.0, 0.1)]
    stats = [(f.mean(0), torch.cov(f.T)) for f in feats]
    ours, t_ours = timed(frechet_torchmetrics, *stats[0], *stats[1])
    ref, t_ref = timed(frechet_scipy, *(x.numpy() for x in stats[0]), *(x.numpy() for x in stats[1]))
    rows.append(
        (
            "Fréchet distance 2048-d",
            f"{t_ours:.2f} s",
            f"scipy sqrtm {t_ref:.2f} s",
            t_ref / t_ours,
            f"{ours:.4f} vs {ref:.4f}",
        )
    )

    query, labels = torch.randn(2000, 128, generator=g), torch.randint(0, args.ids, (2000,), generator=g)
    centers = torch.randn(args.ids, 128, generator=g)
    (rec, _), t_vec = timed(retrieval_recall, query, labels, centers, 10, (1,), 10)
    loop, t_loop = timed(retrieval_loop, query, labels, centers, 10, 10)
    rows.append(
        (
            "Recall@1, gallery 10, 10 repeats",
            f"{t_vec:.3f} s",
            f"Python loop {t_loop:.2f} s",
            t_loop / t_vec,
            f"{rec[1]:.3f} vs {loop:.3f}",
        )
    )

    names = [f"id{i:02d}" for i in range(args.ids)]
    colours = torch.rand(args.ids, 3, generator=g) * 255
    faces = {
        n: (colours[i, :, None, None] + 20 * torch.randn(args.faces, 3, 64, 64, generator=g)).clamp(0, 255).byte()
        for i, n in enumerate(names)
    }
    attrs = {n: {"red": str(bool(colours[i, 0] > 127)), "green": float(colours[i, 1])} for i, n in enumerate(names)}
    kinds = {"red": "categorical", "green": "continuous"}
    train_ids, test_ids = names[: args.ids * 3 // 4], names[args.ids * 3 // 4 :]

    def probe_run():
        probe, codec = train_probe({n: faces[n] for n in train_ids}, attrs, kinds, steps=args.steps)
        real = normalize(torch.cat([faces[n] for n in test_ids]))
        owners = [n for n in test_ids for _ in range(args.faces)]
        return attribute_scores(probe, codec, real, owners, real, owners, attrs)

    scores, t_probe = timed(probe_run)
    rows.append(
        (
            f"attribute probe, {args.ids} ids x {args.faces} faces",
            f"{t_probe:.1f} s",
            "budget 60 s",
            60 / t_probe,
            f"acc {scores['attr/red']:.2f}, R² {scores['attr/green']:.2f}",
        )
    )

    print(f"{'what':42} {'ours':>10} {'baseline':>22} {'ratio':>7}  agreement")
    for what, t, base, ratio, check in rows:
        print(f"{what:42} {t:>10} {base:>22} {ratio:>6.1f}x  {check}")


if __name__ == "__main__":
    main()
