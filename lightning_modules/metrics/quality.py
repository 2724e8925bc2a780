"""Image quality without downloaded weights: Fréchet distance and KID in the feature space of the face probe
(a network trained on the corpus' train-split real faces, `metrics.probe`).

NOT comparable with Inception FID/KID: another feature space (4·width-d probe features of 32 px faces, trained
on this corpus only) and small sets. It answers "how far are the generated faces from real faces of the same
split" on the embedded corpus, where Inception weights are not at hand, and is always computed there.

Protocol. The real faces of the split are halved per identity (alternate faces of each identity into R1 and
R2), so both halves hold every identity. The generated faces G and the held-out real half R2 are each compared
with the reference half R1 at the same sample size n = min(|G|, |R2|) (random subsets, averaged over
`repeats`), so the real-vs-real floor FD(R2, R1) carries the same small-sample bias as FD(G, R1):
    fd_probe       = FD(G_n, R1)      fd_probe/real  = FD(R2_n, R1)       (features standardised by R1)
    kid_probe      = KID(G_n, R1_n)   kid_probe/real = KID(R2_n, R1_n)   (unbiased MMD², cubic kernel)
A generator whose faces are real-like has fd_probe near its floor; faces that all look alike, colour blobs or
blurred faces sit far above it (tests/test_quality.py checks that the probe tells them apart).

A second reference, `fd_probe/speaker_mean`, scores in place of each generated face the mean real face of its
speaker (`speaker_mean_faces`): a generator that knew every speaker exactly and drew their average face, the
optimum of a squared-error regression of face on voice (an L1 one's, the median face, is close to it). It tells
how much of the gap to the floor is the detail and within-speaker variety that averaging removes, which no such
regression can win back.

A third, `fd_probe/prior`, for a model whose generator is a pretrained one kept frozen (model.generator_init with
generator_train=frozen): as many faces of that generator alone, from random z through its own mapping. The voice
chooses where in the prior each face lands; the prior's own samples tell how far its drawing alone is from the
split's faces, a bound the voice route can beat only by choosing each speaker's faces well.

`probe_spread/between` and `probe_spread/within` (`speaker_spread`) say where a gap comes from: the variance of the
generated faces' probe features between speakers and within a speaker, each as a share of the real faces' (1: as
spread as the real ones). A voice that knows only part of a face (sex, accent) draws its speakers close to their
conditional mean: a small `between` share, which fd_probe punishes though every face may be sharp.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.image.kid import poly_mmd

QUALITY_NOTE = "fd_probe / kid_probe: probe feature space, not comparable with Inception FID / KID"


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (float64):
    |μa − μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½, through symmetric eigendecompositions, so that a
    degenerate set (all faces alike: Σ = 0) gives its true distance instead of a failed general eigensolve."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def kid(a: Tensor, b: Tensor) -> float:
    """Unbiased squared MMD with the polynomial kernel (x·y/D + 1)³ between equal-sized sets [n, D]."""
    assert a.shape == b.shape, f"KID needs equal set sizes, got {list(a.shape)} and {list(b.shape)}"
    return float(poly_mmd(a.double(), b.double(), degree=3, gamma=None, coef=1.0))


def halves(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of two disjoint halves that split each identity's samples alternately (R1 gets the extra)."""
    first, second = [], []
    for label in labels.unique():
        idx = torch.nonzero(labels == label).flatten()
        first.append(idx[0::2])
        second.append(idx[1::2])
    return torch.cat(first), torch.cat(second)


def unit_spread(feats: Tensor) -> Tensor:
    """[D] per-feature standard deviation of `feats` [N, D], floored at 1e-3 of the largest: features are read in
    units of the real faces' spread, and dead units are not blown up."""
    spread = feats.std(0)
    return spread.clamp_min(1e-3 * float(spread.max()) + 1e-12)


def probe_quality(
    gen_feats: Tensor,  # [N, D] probe features of the generated faces
    real_feats: Tensor,  # [M, D] probe features of the real faces of the same split
    real_labels: Tensor,  # [M] identity of each real face
    repeats: int = 10,  # random equal-size subsets averaged
    seed: int = 0,
) -> dict[str, float]:
    """fd_probe, fd_probe/real, kid_probe, kid_probe/real (see the module docstring) and the sample sizes."""
    i1, i2 = halves(real_labels)
    # Features in units of the reference half's spread (dead units are not blown up), so that KID's cubic
    # kernel stays near 1 whatever the probe's activation scale; FD then reads in squared standard deviations.
    ref = real_feats[i1].double()
    centre, spread = ref.mean(0), unit_spread(ref)
    gen_feats, real_feats = ((f.double() - centre) / spread for f in (gen_feats, real_feats))
    r1, r2 = real_feats[i1], real_feats[i2]
    n = min(len(gen_feats), len(r2), len(r1))
    if n < 3:
        raise ValueError(
            f"probe quality needs >= 3 faces per set, got {len(gen_feats)} generated and {len(real_feats)} real"
        )
    g = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(("fd_probe", "fd_probe/real", "kid_probe", "kid_probe/real"), 0.0)
    for _ in range(repeats):
        gen_n = gen_feats[torch.randperm(len(gen_feats), generator=g)[:n]]
        r2_n = r2[torch.randperm(len(r2), generator=g)[:n]]
        r1_n = r1[torch.randperm(len(r1), generator=g)[:n]]
        sums["fd_probe"] += frechet_distance(gen_n, r1) / repeats
        sums["fd_probe/real"] += frechet_distance(r2_n, r1) / repeats
        sums["kid_probe"] += kid(gen_n, r1_n) / repeats
        sums["kid_probe/real"] += kid(r2_n, r1_n) / repeats
    return {**sums, "fd_probe/n": n, "fd_probe/n_reference": len(r1)}


def speaker_mean_faces(real: Tensor, real_labels: Tensor, gen_labels: Tensor) -> Tensor:
    """[N, C, H, W]: for each generated face's identity, the mean of its real faces in the held-out half R2
    (`halves`; R1 is the reference they are compared with), or of all its faces where R2 holds none."""
    held_out = torch.zeros(len(real_labels), dtype=torch.bool)
    held_out[halves(real_labels)[1]] = True
    means = {}
    for label in gen_labels.unique().tolist():
        own = real_labels == label
        pick = own & held_out if (own & held_out).any() else own
        if not pick.any():
            raise ValueError(f"speaker_mean_faces: no real face for identity index {label}")
        means[label] = real[pick].float().mean(0)
    return torch.stack([means[label] for label in gen_labels.tolist()])


def speaker_spread(
    gen_feats: Tensor,  # [N, D] probe features of the generated faces
    gen_labels: Tensor,  # [N] identity of each
    real_feats: Tensor,  # [M, D] probe features of the real faces of the same split
    real_labels: Tensor,  # [M] identity of each
) -> dict[str, float]:
    """probe_spread/between and /within: the generated faces' variance between speakers (of their speakers'
    mean features) and within a speaker, each over the real faces' own, in features standardised by the real
    faces' per-feature spread (the scale fd_probe reads them in)."""
    assert gen_feats.shape[1] == real_feats.shape[1] and len(gen_feats) == len(gen_labels), "features / labels"
    scale = unit_spread(real_feats.double())

    def between_within(feats: Tensor, labels: Tensor) -> tuple[float, float]:
        f = feats.double() / scale
        total = float((f - f.mean(0)).square().sum(1).mean())
        within = sum(float((f[labels == i] - f[labels == i].mean(0)).square().sum()) for i in labels.unique())
        return total - within / len(f), within / len(f)

    (gen_between, gen_within), (real_between, real_within) = (
        between_within(gen_feats, gen_labels),
        between_within(real_feats, real_labels),
    )
    return {"probe_spread/between": gen_between / real_between, "probe_spread/within": gen_within / real_within}
