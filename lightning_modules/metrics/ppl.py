"""Perceptual path length, NVlabs `ppl2_wend`: W space, endpoints (t = 0), no crop, ε = 1e-4.

    d = LPIPS_VGG16(G.synthesis(w0), G.synthesis(lerp(w0, w1, ε))) / ε²,  w0, w1 = mapping(z0), mapping(z1)
    PPL = mean of d over the samples between its 1st ('lower') and 99th ('higher') percentiles.
Constant-noise buffers are redrawn per batch and shared by both ends, as NVlabs does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.metrics.weights import load_weights, read_weights, resolve_weights

Distance = Callable[[Tensor, Tensor], Tensor]  # (img0, img1) in [-1, 1] -> [N]


class LPIPSDistance(nn.Module):
    """LPIPS (VGG16 backbone, v0.1 linear heads shipped with torchmetrics) with a local backbone file.

    vgg_path: torchvision `vgg16-397923af.pth`; None looks in the torch hub cache (download only if allowed).
    """

    def __init__(self, vgg_path: str | None = None, download: bool = False):
        super().__init__()
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
        return self.net(img0, img1).flatten()


def trimmed_mean(dist: np.ndarray, lo_pct: float = 1, hi_pct: float = 99) -> float:
    """Mean of `dist` within [lo, hi] percentiles (NVlabs: 'lower' and 'higher' interpolation)."""
    lo = np.percentile(dist, lo_pct, method="lower")
    hi = np.percentile(dist, hi_pct, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


@torch.no_grad()
def path_length(
    G: nn.Module,
    distance: Distance,
    num_samples: int = 50_000,
    batch_size: int = 64,
    epsilon: float = 1e-4,
    latents: Callable[[int, torch.Generator], Tensor] | None = None,
    seed: int = 0,
) -> float:
    """ppl2_wend of a StyleGAN generator (`.mapping`, `.synthesis`, `.z_dim`).

    latents: (n, torch.Generator) -> mapping inputs [n, z_dim] on G's device; default N(0, I) as NVlabs.
    """
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
        w0, w1 = G.mapping(latents(2 * n, rng)).chunk(2)  # [n, num_ws, w_dim] each
        wt1 = w0.lerp(w1, epsilon)  # t = 0 ('end' sampling): w at t is w0 itself
        for buf in noise_bufs:
            buf.copy_(torch.randn(buf.shape, generator=rng, device=device))
        img = G.synthesis(torch.cat([w0, wt1]), noise_mode="const").float()
        d = distance(*img.chunk(2)).reshape(n).double() / epsilon**2
        dists.append(d.cpu())
    return trimmed_mean(torch.cat(dists).numpy())
