"""Weight files that install with the package, by name, each checked before use against its SHA-256 in this
folder's SHA256SUMS (`sha256sum -c SHA256SUMS` checks them too).

    face_prior_64   the embedded corpus' face prior: an unconditional 64 px StyleGAN2, G and D, in NVlabs'
                    state-dict layout (lightning_modules.io.exporters.export_face_prior), trained by `make face-prior`
                    on identities that share no one with the corpus (docs/face_prior.md)
    face_prior_64_targets
                    the embedded corpus' 75 train speakers in W+ of face_prior_64 (safetensors, one mean W+ per
                    speaker): `make latent-targets` projects their faces (experiments.latent_targets);
                    `model.latent_targets` reads it
    voice_prior_128 the embedded corpus' voice prior: prior_cpu's audio encoder (128-d), safetensors without its
                    speaker head (lightning_modules.io.voice_encoder), trained by `make voice-prior` on speaker and
                    nationality classification of 375 speakers of a corpus drawn with another seed
                    (docs/voice_prior.md); make run's encoder starts from it (model.encoder_ckpt)
    face_probe_32   the evaluations' face probe (lightning_modules.metrics.probe, safetensors): trained by
                    `make face-probe` on the embedded corpus' train split; fd_probe, the attribute scores and probe
                    retrieval are measured in it (metrics.probe.weights)

`model.generator_init` (and every command that takes a generator file) accepts a name here as well as a path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SHIPPED = {  # name -> file here
    "face_prior_64": "face_prior_64.pt",
    "face_prior_64_targets": "face_prior_64_targets.safetensors",
    "face_probe_32": "face_probe_32.safetensors",
    "voice_prior_128": "voice_prior_128.safetensors",
}
SUMS = FOLDER / "SHA256SUMS"  # `sha256sum` lines: <hex digest>  <file>


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_of(path_or_name: str | Path) -> Path:
    """A shipped name -> where its file is installed (unchecked); anything else is a path, returned as it is."""
    return FOLDER / SHIPPED[str(path_or_name)] if str(path_or_name) in SHIPPED else Path(path_or_name)


def shipped_file(name: str) -> Path:
    """The installed file of a shipped name, after checking its bytes against the recorded checksum."""
    if name not in SHIPPED:
        raise KeyError(f"{name!r} is not a shipped weight file; shipped: {sorted(SHIPPED)}")
    path = file_of(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped file of {name!r} is missing; reinstall voice2face")
    expected = recorded_sums().get(path.name)
    found = sha256(path)
    if found != expected:
        raise ValueError(
            f"{path}: SHA-256 {found} is not the recorded {expected}; the file is damaged or was replaced "
            "(git checkout or reinstall restores it, `make face-prior` retrains it)"
        )
    return path


def recorded_sums() -> dict[str, str]:
    """{file name: hex digest} of SHA256SUMS."""
    sums = {}
    for line in SUMS.read_text().splitlines() if SUMS.is_file() else []:
        digest, _, file = line.strip().partition("  ")
        sums[file.lstrip("*")] = digest
    return sums


def resolve(path_or_name: str | Path) -> Path:
    """A shipped name -> its checked file; anything else is a path, returned as it is."""
    return shipped_file(str(path_or_name)) if str(path_or_name) in SHIPPED else Path(path_or_name)
