"""Fréchet Inception Distance and KID of generated versus real faces (NVlabs fid50k_full and kid50k semantics).

torchmetrics' FrechetInceptionDistance holds the running sums; this wrapper adds what the paper's protocol
needs: NVlabs quantisation of generated images, TF1-style resizing (`antialias=False`, as torch-fidelity),
a local Inception file, and real-set statistics and features computed once per split and feature network, then
cached. KID reuses the same Inception features (one pass per image): NVlabs' unbiased MMD² with the cubic kernel,
averaged over 100 random subsets of at most 1000 of each set.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from datamodules.files import write_atomic
from lightning_modules.metrics.quality import kid
from lightning_modules.metrics.weights import KNOWN_WEIGHTS, MetricUnavailable, read_weights, resolve_weights

log = logging.getLogger(__name__)

_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # NVlabs kid50k: num_subsets, max_subset_size


def quantize(img: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [0, 255] exactly as NVlabs (x·127.5 + 128, clamp, truncate)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def fingerprint(*tensors: Tensor, extra: str = "") -> str:
    """Short content hash, used to key cached statistics to the exact images and networks."""
    h = hashlib.sha1(extra.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def _inception_fid(weights: Path) -> FrechetInceptionDistance:
    """torchmetrics' FID on the Inception weights in `weights`; MetricUnavailable naming the file if they cannot
    be read as plain tensors or do not fit."""
    # torch-fidelity reads the file with weights_only=False, which would run pickled code: it gets only a file that
    # reads as plain tensors (then both unpicklers take the same, allow-listed steps)
    read_weights(weights, "inception")
    try:
        return FrechetInceptionDistance(
            feature=2048,
            reset_real_features=False,
            feature_extractor_weights_path=str(weights),
            antialias=False,  # TF1 bilinear resize to 299 px, as torch-fidelity and NVlabs
        )
    except RuntimeError as err:  # load_state_dict: missing, unexpected or other-shaped weights
        raise MetricUnavailable(
            f"{weights}: not the inception weights FID needs ({str(err).splitlines()[0][:120]}); put "
            f"{KNOWN_WEIGHTS['inception'][0]} there, or fix metrics.fid.weights_path"
        ) from None


class FID:
    """FID with cached real statistics.

    feature:      None -> Inception-v3 pool3 (2048-d, needs weights); or any nn.Module taking uint8
                  [N,3,H,W] and returning [N, num_features] (tests use a tiny stand-in).
    weights_path: local Inception file (torch-fidelity's weights-inception-2015-12-05-6726825d.pth).
    download:     allow fetching the Inception file when it is not found locally.
    cache_dir:    where real statistics are stored (None: kept in memory only).
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        weights_path: str | None = None,
        download: bool = False,
        cache_dir: str | Path | None = None,
    ):
        if feature is None:
            if "antialias" not in inspect.signature(FrechetInceptionDistance).parameters:
                raise MetricUnavailable("installed torchmetrics has no antialias= for FID; need torchmetrics>=1.4")
            self.metric = _inception_fid(resolve_weights("inception", weights_path, download))
        else:
            self.metric = FrechetInceptionDistance(feature=feature, reset_real_features=False)
        net = self.metric.inception
        self.feature_tag = f"{type(net).__name__}-{fingerprint(*net.state_dict().values())}"
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.real_key: str | None = None
        self.real_features = self.fake_features = None  # [N, D] float32 of the last real set and generated set

    def to(self, device: torch.device | str) -> FID:
        self.metric.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.metric.device

    def cache_file(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"fid_real_{key}_{self.feature_tag}.pt"

    def set_real(self, batches: Callable[[], Iterable[Tensor]], key: str) -> None:
        """Real statistics for `key` (split + data fingerprint): from memory, the cache file, or computed.

        batches: called only when the statistics must be computed; yields uint8 [N,3,H,W] real images.
        """
        if key == self.real_key:
            return
        file = self.cache_file(key)
        state = None if file is None or not file.is_file() else self._read_cache(file)
        if state is not None:
            for name in _REAL_STATES:
                setattr(self.metric, name, state[name].to(self.device))
            self.real_features = state["real_features"]
        else:
            for name in _REAL_STATES:
                getattr(self.metric, name).zero_()
            self.real_features = self._update(batches(), real=True)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                real = {n: getattr(self.metric, n).cpu() for n in _REAL_STATES} | {"real_features": self.real_features}
                write_atomic(file, lambda tmp: torch.save(real, tmp))  # a killed run leaves no half-written cache
        self.real_key = key

    def _update(self, batches: Iterable[Tensor], real: bool) -> Tensor:
        """Feed uint8 image batches to the FID sums; returns the features [N, D] the network gave them (for KID)."""
        seen = []
        hook = self.metric.inception.register_forward_hook(
            lambda _module, _inputs, out: seen.append(out.detach().float().cpu().reshape(-1, out.shape[-1]))
        )
        try:
            for imgs in batches:
                self._check(imgs, "real" if real else "generated")
                self.metric.update(imgs.to(self.device), real=real)
        finally:
            hook.remove()
        return torch.cat(seen) if seen else torch.zeros(0, 0)

    def _read_cache(self, file: Path) -> dict | None:
        """The real statistics of a cache file, or None (with a warning) when it cannot be used: a cache is
        derived data, so a truncated or foreign file is computed again and replaced, never a failed run."""
        try:
            state = torch.load(file, map_location=self.device, weights_only=True)
            if all(state[n].shape == getattr(self.metric, n).shape for n in _REAL_STATES) and "real_features" in state:
                return state
            problem = "statistics of other shapes"
        except Exception as err:  # truncated, not a torch file, entries missing: all mean "not this cache"
            problem = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        log.warning("%s: unusable FID cache (%s); computing the real statistics again", file, problem)
        return None

    @torch.no_grad()
    def compute(self, fakes: Iterable[Tensor]) -> float:
        """FID of the uint8 generated images in `fakes` against the current real statistics."""
        if self.real_key is None:
            raise RuntimeError("FID.compute before FID.set_real")
        self.metric.reset()  # clears generated statistics only (reset_real_features=False)
        self.fake_features = self._update(fakes, real=False)
        return float(self.metric.compute())

    def kid(self, seed: int = 0) -> float:
        """KID of the images of the last `compute` against the real set: NVlabs' kid50k, the unbiased MMD² with
        the kernel (x·y/D + 1)³ over KID_SUBSETS random subsets of m = min(|gen|, |real|, KID_SUBSET_SIZE) each."""
        if self.real_key is None or self.fake_features is None:
            raise RuntimeError("FID.kid before FID.set_real and FID.compute")
        gen, real = self.fake_features, self.real_features
        m = min(len(gen), len(real), KID_SUBSET_SIZE)
        g = torch.Generator().manual_seed(seed)
        subsets = [
            kid(gen[torch.randperm(len(gen), generator=g)[:m]], real[torch.randperm(len(real), generator=g)[:m]])
            for _ in range(KID_SUBSETS)
        ]
        return sum(subsets) / KID_SUBSETS

    @staticmethod
    def _check(imgs: Tensor, what: str) -> None:
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(f"FID {what} images must be uint8 [N,3,H,W], got {imgs.dtype} {tuple(imgs.shape)}")
