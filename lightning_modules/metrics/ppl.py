"""Perceptual path length at the endpoints (t = 0, NVlabs' `end` sampling), no crop, ε = 1e-4, in one of two spaces:

    ppl_wend (NVlabs ppl2_wend): d = LPIPS(G.synthesis(w0), G.synthesis(lerp(w0, w1, ε))) / ε², w = mapping(z)
    ppl_zend (NVlabs ppl_zend):  d = LPIPS(G(z0), G(slerp(z0, z1, ε))) / ε²
PPL = mean of d over the samples between its 1st ('lower') and 99th ('higher') percentiles. Only z space exists
for a generator without a mapping network (DCGAN), so only ppl_zend fills every row of the paper's Table 2.
The latent pairs (z0, z1) are two held-out voices' generator inputs by default, or N(0, I) as NVlabs draws them.
Constant-noise buffers are redrawn per batch and shared by both ends, as NVlabs does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.metrics.weights import load_weights, read_weights, resolve_weights

Distance = Callable[[Tensor, Tensor], Tensor]  # (img0, img1) in [-1, 1] -> [N]


class LPIPSDistance(nn.Module):
    """LPIPS (VGG16 backbone, v0.1 linear heads shipped with torchmetrics) with a local backbone file.

    vgg_path: torchvision `vgg16-397923af.pth`; None looks in the torch hub cache (download only if allowed).
    """

    def __init__(self, vgg_path: str | None = None, download: bool = False, max_size: int | None = None):
        super().__init__()
        self.max_size = max_size  # larger images are area-resized to it first (VGG was trained on 224 px)
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        file = resolve_weights("vgg16", vgg_path, download)
        # pnet_rand=True builds the backbone without torchvision's download; its ImageNet weights come next.
        self.net = _NoTrainLpips(net="vgg", pretrained=True, pnet_rand=True)
        features = {
            k[len("features.") :]: v for k, v in read_weights(file, "vgg16").items() if k.startswith("features.")
        }
        slices = [range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]  # relu1_2 .. relu5_3
        remapped = {}
        for s, layers in enumerate(slices, start=1):
            for key, value in features.items():
                if int(key.split(".")[0]) in layers:
                    remapped[f"slice{s}.{key}"] = value
        load_weights(self.net.net, remapped, file, "vgg16")
        self.requires_grad_(False)

    def forward(self, img0: Tensor, img1: Tensor) -> Tensor:
        if self.max_size is not None and img0.shape[-1] > self.max_size:
            size = (self.max_size, self.max_size)
            img0, img1 = (F.interpolate(x, size=size, mode="area") for x in (img0, img1))
        return self.net(img0, img1).flatten()


def trimmed_mean(dist: np.ndarray, lo_pct: float = 1, hi_pct: float = 99) -> float:
    """Mean of `dist` within [lo, hi] percentiles (NVlabs: 'lower' and 'higher' interpolation)."""
    lo = np.percentile(dist, lo_pct, method="lower")
    hi = np.percentile(dist, hi_pct, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation of the directions of a and b [N, D], with their norms interpolated linearly: a at
    t = 0, b at t = 1. For unit vectors it is NVlabs' slerp; a StyleGAN mapping normalises z, so there the norm
    does not matter, and for a generator fed raw voice embeddings (DCGAN) the path keeps their scale."""
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    omega = torch.acos((ua * ub).sum(1, keepdim=True).clamp(-1, 1))
    parallel = torch.sin(omega).abs() < 1e-7  # sin(t·ω)/sin(ω) -> t: the chord of the directions
    so = torch.where(parallel, 1.0, torch.sin(omega))
    wa = torch.where(parallel, 1.0 - t, torch.sin((1 - t) * omega) / so)
    wb = torch.where(parallel, t, torch.sin(t * omega) / so)
    return (wa * ua + wb * ub) * (na + t * (nb - na))


@torch.no_grad()
def path_length(
    G: nn.Module,
    distance: Distance,
    num_samples: int = 50_000,
    batch_size: int = 64,
    epsilon: float = 1e-4,
    latents: Callable[[int, torch.Generator], Tensor] | None = None,
    seed: int = 0,
    space: str = "w",  # w: ppl2_wend (needs .mapping / .synthesis) | z: ppl_zend (any G(z))
) -> float:
    """Endpoint path length of a generator in `space`.

    latents: (n, torch.Generator) -> [n, z_dim] on G's device, the pairs as [z0s; z1s] (n even); default N(0, I)
    as NVlabs.
    """
    assert space in ("w", "z"), space
    device = next(G.parameters()).device
    G = copy.deepcopy(G).eval()  # noise buffers are redrawn below: never touch the caller's generator
    rng = torch.Generator(device=device).manual_seed(seed)
    if latents is None:

        def latents(n: int, g: torch.Generator) -> Tensor:
            return torch.randn([n, G.z_dim], generator=g, device=device)

    noise_bufs = [b for name, b in G.named_buffers() if name.endswith("noise_const")]
    dists = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z0, z1 = latents(2 * n, rng).chunk(2)  # [n, z_dim] each
        for buf in noise_bufs:
            buf.copy_(torch.randn(buf.shape, generator=rng, device=device))
        if space == "w":
            w0, w1 = G.mapping(torch.cat([z0, z1])).chunk(2)  # [n, num_ws, w_dim] each
            img = G.synthesis(torch.cat([w0, w0.lerp(w1, epsilon)]), noise_mode="const")
        else:
            img = G(torch.cat([z0, slerp(z0, z1, epsilon)]), noise_mode="const")
        d = distance(*img.float().chunk(2)).reshape(n).double() / epsilon**2
        dists.append(d.cpu())
    return trimmed_mean(torch.cat(dists).numpy())


def pair_latents(pool: Tensor, noise_dim: int = 0) -> Callable[[int, torch.Generator], Tensor]:
    """Latents for path_length drawn from `pool` [U, D] (held-out voice embeddings): pairs of two different rows,
    each with `noise_dim` fresh N(0, 1) values appended (the generator input of a model with noise_z_dim)."""
    if len(pool) < 2:
        raise ValueError(f"path length from voices needs >= 2 held-out utterances, got {len(pool)}")

    def latents(n: int, g: torch.Generator) -> Tensor:
        assert n % 2 == 0, n
        first = torch.randint(len(pool), [n // 2], generator=g, device=g.device)
        second = (first + torch.randint(1, len(pool), [n // 2], generator=g, device=g.device)) % len(pool)
        z = pool.to(g.device)[torch.cat([first, second])]
        if noise_dim:
            z = torch.cat([z, torch.randn([n, noise_dim], generator=g, device=g.device, dtype=z.dtype)], dim=1)
        return z

    return latents
