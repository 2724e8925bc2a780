"""The prepared folder: one shard per identity plus its config and manifest. The only code that knows the keys.

    <prepared>/shards/<VGGFace1 ID>.pt  plain tensors (torch.save; read with torch.load(mmap=True), so nothing is
                                        copied until used): feats float16 [F, ΣT] (the stored features of all clips
                                        end to end), offsets long [n+1], faces uint8 [K, 3, S, S], clips and images
                                        (paths), skipped [[path, reason]], inputs (what the shard was made from)
    <prepared>/config.json              the preprocessing config (with SHARD_VERSION), its hash and the raw root
    <prepared>/manifest.json            counts, skipped items, dropped identities; written last, so a folder holds
                                        one only when complete

A prepared folder sits at <cache_dir>/<config hash>, the hash over the config and the root, so any change of
preprocessing or data goes to a new folder and an old folder is never read with another config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from datamodules.files import DataError, write_atomic, write_json

SHARD_VERSION = "2"  # bump when the shard bytes change for a given config: old folders are then made anew
# 2: faces warped from the window they sample, a shrink of 4 or more first an integer one (datamodules/faces.warp)


def preprocessing_config(
    detector: str,  # datamodules.faces.DETECTORS
    face_size: int,  # crop side, pixels
    features: dict | None,  # AudioFeatures kwargs; None: log-mel
    vad: dict | None,  # AudioFrontEnd VAD kwargs
    face_align: str = "arcface",  # datamodules.faces.ALIGNS
) -> dict:
    """What a shard's bytes depend on besides its inputs (the version included)."""
    config = {
        "version": SHARD_VERSION,
        "detector": detector,
        "face_size": face_size,
        "features": dict(features or {"kind": "logmel"}),
        "vad": dict(vad or {}),
    }
    if face_align != "arcface":  # ArcFace's crop is the one of every folder before the key: they keep their hash
        config["face_align"] = face_align
    return config


def face_align_of(config: dict) -> str:
    """The crop template a preprocessing config asks for (absent: ArcFace's, see preprocessing_config)."""
    return config.get("face_align", "arcface")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def prepared_folder(cache_dir: Path, config: dict, root: Path) -> Path:
    """<cache_dir>/<hash of the config and the resolved root>."""
    return Path(cache_dir) / config_hash({**config, "root": str(Path(root).resolve())})


def shard_file(prepared: Path, name: str) -> Path:
    return Path(prepared) / "shards" / f"{name}.pt"


@dataclass
class Shard:
    """One identity's clips and faces."""

    feats: Tensor  # float16 [F, ΣT]
    offsets: Tensor  # long [n + 1]: clip i is feats[:, offsets[i]:offsets[i + 1]]
    faces: Tensor  # uint8 [K, 3, S, S]
    clips: list[str]  # clip paths, relative to the root
    images: list[str]  # face image paths kept, relative to the root
    skipped: list[list[str]]  # [path, reason] of inputs left out
    inputs: str | None  # fingerprint of the inputs (None in shards of before it was stored)

    @property
    def num_clips(self) -> int:
        return len(self.clips)

    def clip(self, i: int) -> Tensor:
        """Stored features [F, T_i] of clip i (a view)."""
        return self.feats[:, int(self.offsets[i]) : int(self.offsets[i + 1])]


def read_shard(path: Path) -> Shard:
    s = torch.load(path, mmap=True, weights_only=True)
    return Shard(s["feats"], s["offsets"], s["faces"], s["clips"], s["images"], s["skipped"], s.get("inputs"))


def shard_inputs(path: Path) -> str | None:
    """The input fingerprint a shard was made from; None when it is missing or unreadable (made again)."""
    if not path.is_file():
        return None
    try:
        return read_shard(path).inputs
    except Exception:  # any unreadable shard is simply made again
        return None


def write_shard(
    path: Path,
    feats: list[Tensor],
    faces: list[Tensor],
    clips: list[str],
    images: list[str],
    skipped: list,
    inputs: str,
    n_features: int,
    face_size: int,
) -> None:
    """Write one identity's shard atomically: a shard exists only when complete."""
    S = face_size
    shard = {
        "feats": torch.cat(feats, 1) if feats else torch.zeros(n_features, 0, dtype=torch.float16),
        "offsets": torch.tensor([0] + [f.shape[1] for f in feats]).cumsum(0),
        "faces": torch.stack(faces) if faces else torch.zeros(0, 3, S, S, dtype=torch.uint8),
        "clips": clips,
        "images": images,
        "skipped": [list(i) for i in skipped],
        "inputs": inputs,
    }
    write_atomic(path, lambda p: torch.save(shard, p))


def claim(prepared: Path, config: dict, root: Path) -> str:
    """Create `prepared` for this config and root, or check that it was made for them; returns the config hash."""
    digest = config_hash(config)
    cfg_file = prepared / "config.json"
    if not cfg_file.is_file():
        check_nothing_else(prepared)
    elif (earlier := read_claim(cfg_file))["hash"] != digest:
        raise DataError(f"{cfg_file}: {prepared} was prepared with another config; choose a new `out` or delete it")
    elif earlier.get("root") != str(root.resolve()):
        raise DataError(
            f"{cfg_file}: {prepared} was prepared from another root ({earlier.get('root')}, not "
            f"{root.resolve()}); choose a new `out` or delete it"
        )
    (prepared / "shards").mkdir(parents=True, exist_ok=True)
    write_json(cfg_file, {"hash": digest, "config": config, "root": str(root.resolve())})
    return digest


def check_nothing_else(prepared: Path) -> None:
    """A folder without config.json is not a prepared one: refuse it unless it is empty (or holds only the empty
    shards/ of a run killed at once), so that its own manifest.json or files never mix with shards."""
    if not prepared.is_dir():
        return
    entries = [p for p in prepared.iterdir() if not (p.name == "shards" and p.is_dir() and not any(p.iterdir()))]
    if entries:
        shown = ", ".join(sorted(p.name for p in entries)[:5])
        raise DataError(f"{prepared}: holds files ({shown}) but is not a prepared folder; choose a new or empty `out`")


def read_claim(cfg_file: Path) -> dict:
    """config.json of a prepared folder ({hash, config, root}); DataError when it is another program's file."""
    try:
        claim = json.loads(cfg_file.read_text())
        if isinstance(claim, dict) and isinstance(claim.get("hash"), str) and isinstance(claim.get("config"), dict):
            return claim
    except ValueError:  # not JSON, or not UTF-8
        pass
    raise DataError(f"{cfg_file}: not the config.json of a prepared folder; choose a new or empty `out`")


def read_config(prepared: Path) -> dict:
    """The preprocessing config a prepared folder was made with."""
    return read_claim(Path(prepared) / "config.json")["config"]


def write_manifest(prepared: Path, manifest: dict) -> None:
    write_json(Path(prepared) / "manifest.json", manifest)


def read_manifest(prepared: Path) -> dict:
    """manifest.json of a complete prepared folder; DataError when the folder is not (fully) prepared."""
    path = Path(prepared) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not prepared; call prepare_data() or run python -m datamodules.prepare")
    return json.loads(path.read_text())
