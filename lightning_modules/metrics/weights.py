"""Local resolution of pretrained metric weights (Inception, LPIPS-VGG16, FaceNet).

Every metric network reads a local file. The lookup order is: the configured path, then the file's usual
name in the torch hub cache (`torch.hub.get_dir()/checkpoints`), then, only with `download=True`, the public
URL. Where none works the metric is unavailable: `MetricUnavailable` carries the reason, and the caller
skips the metric (it never reports a made-up number).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from datamodules.files import unreadable_reason
from lightning_modules.io.safe_load import load_data

log = logging.getLogger(__name__)

# name -> (file name in the torch hub cache, public URL)
KNOWN_WEIGHTS = {
    "inception": (
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "facenet": (
        "20180402-114759-vggface2.pt",
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    ),
}

_said: set[str] = set()


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; `str(err)` is the reason recorded in `result["_skipped"]`."""


def say_once(message: str) -> None:
    """Log a skip reason the first time it occurs in this process (callbacks ask again every N kimg)."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(name: str, path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Return a local file holding the weights `name` (a key of KNOWN_WEIGHTS) or raise MetricUnavailable."""
    filename, url = KNOWN_WEIGHTS[name]
    if path is not None:
        path = Path(path).expanduser()
        reason = unreadable_reason(path)
        if reason == "no such file":
            raise MetricUnavailable(f"{name} weights: {path} does not exist (fix the configured weights_path)")
        if reason:  # a folder, a FIFO, a symlink loop: each named, not "does not exist"
            raise MetricUnavailable(f"{name} weights: {path}: {reason}; the weights_path must name the file")
        return path
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached
    if download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)
            return cached
        except Exception as err:  # no network, proxy, disk: all mean "not available here"
            raise MetricUnavailable(f"{name} weights: download of {url} failed ({err})") from err
    raise MetricUnavailable(
        f"{name} weights not found: put {filename} ({url}) at {cached}, or set its weights_path, "
        f"or allow metrics.download=true"
    )


def read_weights(file: Path, name: str) -> dict:
    """The state dict of a weights file, read as data only (never pickled code); MetricUnavailable naming the
    file when it cannot be read so."""
    try:
        state = load_data(file, f"{name} weights", fix="delete it to download it again, or fix its weights_path")
    except ValueError as err:
        raise MetricUnavailable(str(err)) from None
    if not isinstance(state, dict):
        raise MetricUnavailable(f"{file}: not {name} weights (a {type(state).__name__}, not a state dict)")
    return state


def load_weights(module: torch.nn.Module, state: dict, file: Path, name: str) -> None:
    """module.load_state_dict(state), strictly; MetricUnavailable naming the file if they do not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip()[:160] if "\n" in str(err) else str(err)[:160]
        raise MetricUnavailable(
            f"{file}: not the {name} weights this metric needs ({first}); put {KNOWN_WEIGHTS[name][0]} "
            f"({KNOWN_WEIGHTS[name][1]}) there, or fix its weights_path"
        ) from None
