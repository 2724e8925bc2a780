"""Projection of real images into the W+ space of a StyleGAN2 generator (NVlabs stylegan2-ada-pytorch's
`projector.py` objective, written again here, with one w per layer).

    w_avg, w_std  mean of 10,000 mapping outputs (fixed seed 123, as NVlabs) and their RMS distance to it
    start         every layer's w at w_avg ([N, num_ws, w_dim]); every noise map N(0, 1)
    step t/T      lr = 0.1 · cosine ramp-down over the last 25% · linear ramp-up over the first 5%;
                  the synthesised ws get latent noise of std w_std · 0.05 · max(0, 1 − t / 0.75)², per element
    loss          Σ_images distance(G.synthesis(ws, const noise), target) + 1e5 · Σ_maps Σ_scales
                  (mean(n · roll(n, 1, x))² + mean(n · roll(n, 1, y))²), the maps halved by 2×2 means down to 8 px
    after a step  every noise map is set to zero mean and unit variance again
Adam (β = 0.9, 0.999) optimises the ws and the noise maps together. NVlabs optimises one w broadcast to all
layers (`space="w"` here); by default each layer has its own (W+), which fits real faces closer but leaves W's
prior further behind. Where
a layer has fewer channels than w_dim (a 256 px G's top layers), the part of its w in the null space of the
layer's affine does not reach the image: it lies wherever Adam's per-element steps left it, so compare two W+
through G, not element by element.
Several images are projected at once with independent ws, noise maps and random draws (one seed per image), so an
image's projection does not depend on which images share its batch (up to float rounding).

The distance: LPIPS (VGG16, the metric NVlabs uses) where its weights are local, else an LPIPS-like
distance in the project's face probe (`ProbeDistance`), else a pixel + image-pyramid L2 (`PixelDistance`);
`make_distance` chooses and says why. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules import weights
from lightning_modules.io.safe_load import check_backed, load_data, refuse_unreadable
from lightning_modules.metrics.ppl import LPIPSDistance
from lightning_modules.metrics.probe import PROBE_RES, FaceProbe, load_probe_file
from lightning_modules.metrics.weights import KNOWN_WEIGHTS, MetricUnavailable, hub_checkpoint_dir
from lightning_modules.nets.latent import unconditional

log = logging.getLogger(__name__)

DISTANCES = ("auto", "lpips", "probe", "pixel")
PROBE_FILE = "face_probe_32 (the shipped probe), a probe file of `make face-probe`, or a FaceProbe state dict"

# ----------------------------------------------------------------------------------------------------
# Image distances: (synth, target) [N, 3, S, S] in [-1, 1] -> [N].
# ----------------------------------------------------------------------------------------------------


class PixelDistance(nn.Module):
    """Mean squared error of the images plus that of each 2×2-mean downsampled pair, down to 8 px: the coarse
    levels weigh the layout and the colours of a face as much as the full image weighs its detail."""

    def forward(self, synth: Tensor, target: Tensor) -> Tensor:
        total = (synth - target).square().mean(dim=(1, 2, 3))
        while synth.shape[-1] > 8:
            synth, target = F.avg_pool2d(synth, 2), F.avg_pool2d(target, 2)
            total = total + (synth - target).square().mean(dim=(1, 2, 3))
        return total


class ProbeDistance(nn.Module):
    """LPIPS without its learned weights, in the face probe's trunk: at each of its ReLUs the activations are
    unit-normalised over channels, and the squared difference summed over channels and averaged over positions;
    the four layers are summed. The probe sees faces at 32 px, so finer detail does not count."""

    def __init__(self, probe: FaceProbe):
        super().__init__()
        self.probe = probe.eval().requires_grad_(False)

    def features(self, img: Tensor) -> list[Tensor]:
        x = F.interpolate(img, size=(PROBE_RES, PROBE_RES), mode="area") if img.shape[-1] != PROBE_RES else img
        found = []
        for layer in self.probe.trunk:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                found.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))  # eps: a dead position stays zero
        return found

    def forward(self, synth: Tensor, target: Tensor) -> Tensor:
        pairs = zip(self.features(synth), self.features(target))
        return sum((a - b).square().sum(dim=1).mean(dim=(1, 2)) for a, b in pairs)


def load_probe(path) -> FaceProbe:
    """The FaceProbe of a saved state dict (or {"state_dict": ...}); its width, classes and heads are read off
    the tensors, so no other record of how it was built is needed. The shipped name and safetensors probe files
    (lightning_modules.metrics.probe.save_probe) are read as such."""
    if str(path) in weights.SHIPPED or str(path).endswith(".safetensors"):
        return load_probe_file(weights.resolve(path))[0].float()  # the projector optimises in float32
    refuse_unreadable(path, f"{path}: probe file not found", f"probe= must name {PROBE_FILE}")
    data = load_data(path, "a face probe", fix=f"probe= must name {PROBE_FILE}")
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or "trunk.0.weight" not in state or "identity.weight" not in state:
        raise ValueError(
            f"{path}: not a face probe (no trunk.0.weight / identity.weight); probe= must name {PROBE_FILE}"
        )
    check_backed(state, path)
    width = state["trunk.0.weight"].shape[0] if state["trunk.0.weight"].ndim == 4 else 0
    if not 1 <= width <= 1024:  # the trunk's widths grow as its square: a small file must not claim gigabytes
        raise ValueError(
            f"{path}: trunk.0.weight {list(state['trunk.0.weight'].shape)} gives no probe width in 1..1024"
        )
    heads = {k.split(".")[1]: v.shape[0] for k, v in state.items() if k.startswith("heads.") and k.endswith(".weight")}
    probe = FaceProbe(state["identity.weight"].shape[0], heads, width=width)
    try:
        probe.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: not a face probe ({str(err).splitlines()[0][:160]}); {PROBE_FILE}") from None
    return probe.eval()


def make_distance(kind: str = "auto", lpips_weights: str | None = None, probe: str | None = None):
    """(distance module, its name, why it was chosen). auto: LPIPS where its VGG16 weights are local (lpips_weights
    or the torch hub cache), else the probe in `probe` (a file) where one is given, else the pixel distance."""
    if kind not in DISTANCES:
        raise ValueError(f"distance={kind}: must be one of {'|'.join(DISTANCES)}")
    filename, url = KNOWN_WEIGHTS["vgg16"]
    cached = hub_checkpoint_dir() / filename
    missing = f"no {filename} in {cached.parent} ({url}) and no lpips_weights=PATH"
    if kind in ("auto", "lpips") and (lpips_weights is not None or cached.is_file()):
        try:  # a weights file that is there but unreadable is an error, never a quiet change of distance
            lpips = LPIPSDistance(lpips_weights, download=False, max_size=256)  # as NVlabs' projector
            return lpips, "lpips", "LPIPS-VGG16 (local weights), images above 256 px taken at 256 px"
        except MetricUnavailable as err:
            raise ValueError(f"distance={kind}: {err}") from None
    if kind == "lpips":
        raise ValueError(f"distance=lpips: {missing}; nothing is downloaded")
    unavailable = f"LPIPS unavailable: {missing}"
    if kind == "probe" and probe is None:
        raise ValueError(f"distance=probe needs probe=PATH, {PROBE_FILE}")
    if probe is not None and kind in ("auto", "probe"):
        why = "chosen" if kind == "probe" else f"{unavailable}; probe= given"
        return ProbeDistance(load_probe(probe)), "probe", f"LPIPS-like in the face probe {probe} at 32 px ({why})"
    why = "chosen" if kind == "pixel" else f"{unavailable}; no probe= given"
    return PixelDistance(), "pixel", f"pixel + 2x2-mean pyramid MSE down to 8 px ({why})"


# ----------------------------------------------------------------------------------------------------
# The optimisation.
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def w_stats(G, num_samples: int = 10_000, chunk: int = 1000) -> tuple[Tensor, float]:
    """(w_avg [w_dim], w_std) of G's own mapping (not a voice head that replaced it) over z ~ N(0, I) of seed 123,
    as NVlabs: w_std is the RMS Euclidean distance of a w to w_avg (the spread of whole vectors, not per element)."""
    mapping = unconditional(G)
    device = next(mapping.parameters()).device
    z = torch.randn([num_samples, mapping.z_dim], generator=torch.Generator().manual_seed(123)).to(device)
    w = torch.cat([mapping(part)[:, 0] for part in z.split(chunk)])  # chunks: [chunk, num_ws, w_dim] at a time
    w_avg = w.mean(dim=0)
    return w_avg, float((w - w_avg).square().sum(dim=1).mean().sqrt())


def noise_regularization(noise: dict[str, Tensor]) -> Tensor:
    """[N]: per image, Σ over its noise maps [N, r, r] and their 2×2-mean downsamplings to 8 px of the squared
    mean products with the map shifted by one pixel in x and in y (NVlabs': spatially correlated noise costs)."""
    total = torch.zeros([])  # a G without noise inputs has no maps
    for maps in noise.values():
        n = maps[:, None]  # [N, 1, r, r] for avg_pool2d
        while True:
            total = total + (n * n.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (n * n.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


def learning_rate(t: float, initial: float, rampdown: float, rampup: float) -> float:
    """NVlabs' schedule at t = step / steps: a half cosine down over the last `rampdown`, linear up over `rampup`."""
    ramp = 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / rampdown) * math.pi)
    return initial * ramp * min(1.0, t / rampup)


@dataclass
class Projection:
    ws: Tensor  # [N, num_ws, w_dim] float32, on the CPU
    noise: dict[str, Tensor]  # the optimised noise maps {buffer name: [N, r, r]}, on the CPU
    distance: Tensor  # [N], the distance of these ws through these noise maps to the targets


def synthesis_with_noise(G, batch: int):
    """(ws [N, num_ws, w_dim], noise {name: [N, r, r]}) -> images, each image through its own noise maps (G's
    noise_const buffers hold one map per layer, so a batch goes through torch.func.vmap of G.synthesis)."""
    if batch == 1:
        return lambda ws, noise: torch.func.functional_call(
            G.synthesis, {k: v[0] for k, v in noise.items()}, (ws,), {"noise_mode": "const"}
        )

    def one(w, noise):
        return torch.func.functional_call(G.synthesis, noise, (w[None],), {"noise_mode": "const"})[0]

    return torch.func.vmap(one)


def _frozen_copy(G: nn.Module, device: torch.device, batched: bool) -> nn.Module:
    """A copy of G to project through (its noise buffers are swapped); vmap over several images cannot batch the
    Triton kernels (autograd Functions without a vmap rule), so those run NVlabs' PyTorch ops."""
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    for module in G.modules() if batched else ():
        if hasattr(module, "impl"):
            module.impl = "torch"
    return G


def _per_image_randn(n: int, seeds: list[int] | None, device: torch.device):
    """randn(shape) -> [n, *shape], row i drawn from image i's own generator (seeded 0, 1, ... or by `seeds`)."""
    rngs = [torch.Generator(device=device).manual_seed(s) for s in (range(n) if seeds is None else seeds)]
    if len(rngs) != n:
        raise ValueError(f"project: {len(rngs)} seeds for {n} images")
    return lambda shape: torch.stack([torch.randn(shape, generator=rng, device=device) for rng in rngs])


@torch.no_grad()
def _renormalize(noise: dict[str, Tensor]) -> None:
    """Each noise map back to zero mean and unit variance: the regulariser only sees correlations."""
    for maps in noise.values():
        maps -= maps.mean(dim=(1, 2), keepdim=True)
        maps *= maps.square().mean(dim=(1, 2), keepdim=True).rsqrt()


def project(
    G: nn.Module,  # A StyleGAN2 Generator (lightning_modules.nets.stylegan2); not changed.
    target: Tensor,  # Images [N, 3, S, S] in [-1, 1], S = G.img_resolution.
    distance: nn.Module,  # (synth, target) -> [N]; see make_distance.
    *,
    num_steps: int = 1000,  # Adam steps.
    stats: tuple[Tensor, float] | None = None,  # (w_avg, w_std) of w_stats (None: computed here).
    initial_learning_rate: float = 0.1,
    initial_noise_factor: float = 0.05,  # Latent noise std at t = 0, in units of w_std.
    lr_rampdown_length: float = 0.25,
    lr_rampup_length: float = 0.05,
    noise_ramp_length: float = 0.75,  # The latent noise falls (quadratically) to zero at this t.
    regularize_noise_weight: float = 1e5,
    seeds: list[int] | None = None,  # One per image: its noise maps' start and latent noise (None: 0, 1, ...).
    log_every: int = 100,  # Log the mean distance and loss every this many steps (0: never).
    space: str = "wplus",  # wplus: one w per layer | w: one w for all layers (NVlabs' projector).
) -> Projection:
    """W+ (and noise maps) of each target under NVlabs' projection objective; see the module docstring. With
    space="w" the ws returned are one w repeated over the layers."""
    if space not in ("w", "wplus"):
        raise ValueError(f"project: space must be 'w' or 'wplus', got {space!r}")
    device = target.device
    G = _frozen_copy(G, device, batched=len(target) > 1)
    w_avg, w_std = w_stats(G) if stats is None else stats
    randn = _per_image_randn(len(target), seeds, device)
    layers = 1 if space == "w" else G.num_ws  # the ws Adam moves; w broadcasts its one to every layer
    ws = w_avg.to(device).expand(len(target), layers, -1).clone().requires_grad_(True)
    noise = {
        n: randn(b.shape).requires_grad_(True) for n, b in G.synthesis.named_buffers() if n.endswith("noise_const")
    }
    synthesis = synthesis_with_noise(G, len(target))
    optimizer = torch.optim.Adam([ws, *noise.values()], betas=(0.9, 0.999), lr=initial_learning_rate)
    for step in range(num_steps):
        t = step / num_steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        w_noise = randn(ws.shape[1:]) * w_noise_scale
        dist = distance(synthesis((ws + w_noise).expand(-1, G.num_ws, -1), noise), target)
        loss = dist.sum() + noise_regularization(noise).sum() * regularize_noise_weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _renormalize(noise)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == num_steps):
            shown = f"distance {float(dist.detach().mean()):.4g} loss {float(loss.detach()):.4g}"
            log.info(f"step {step + 1:>4d}/{num_steps}: {shown}")
    with torch.no_grad():
        ws = ws.detach().expand(-1, G.num_ws, -1).contiguous()
        dist = distance(synthesis(ws, noise), target)
    return Projection(ws.cpu(), {k: v.detach().cpu() for k, v in noise.items()}, dist.cpu())


def project_each(
    G: nn.Module,  # as project
    images: Tensor,  # [N, 3, S, S] in [-1, 1]
    distance: nn.Module,  # as project
    *,
    num_steps: int,  # Adam steps per image
    batch: int,  # images projected at once
    seed: int,  # the k-th image draws its noise maps and latent noise from seed + k, whatever batch it falls in
    space: str,  # w | wplus, as project
    stats: tuple[Tensor, float] | None = None,  # w_stats(G), computed once here when None
    progress=None,  # called with the number of images projected so far after each batch, or None
) -> Tensor:
    """[N, num_ws, w_dim] the ws of every image, projected `batch` at a time (the images' own seeds, so an image's
    projection does not depend on the batch size)."""
    stats = w_stats(G) if stats is None else stats
    out = []
    for start in range(0, len(images), batch):
        target = images[start : start + batch]
        seeds = [seed + k for k in range(start, start + len(target))]
        out.append(
            project(G, target, distance, num_steps=num_steps, stats=stats, seeds=seeds, log_every=0, space=space).ws
        )
        if progress is not None:
            progress(start + len(target))
    return torch.cat(out)
