"""Faces from your own audio: `python -m experiments.generate ckpt=PATH audio=FILE|DIR out=DIR`.

Each input goes through the checkpoint's own audio front end (load -> VAD -> features, as in training),
then the EMA generator. Writes one PNG per input and a grid; a file that cannot be read or holds no speech
is reported by name and reason, and the command exits non-zero.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
import torchvision.utils as vutils
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def list_audio(audio: str | Path) -> list[Path]:
    path = Path(audio)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder")
        return files
    raise FileNotFoundError(f"{path}: no such audio file or folder")


@torch.no_grad()
def generate_faces(
    model, front_end, files: list[Path], out: str | Path, truncation_psi: float = 1.0, grid_columns: int = 8
) -> tuple[list[Path], dict[str, str]]:
    """Write out/<stem>.png per readable input and out/grid.png; return (written PNGs, {file: error})."""
    from datamodules.audio import AudioError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, errors, faces = [], {}, []
    for file in files:
        try:
            feats = front_end(str(file))  # [F, frames]
        except AudioError as err:
            errors[str(file)] = err.reason
            continue
        audio = feats[None].to(model.device, torch.float32)
        lengths = torch.tensor([feats.shape[-1]], device=model.device)
        img = model.generate(audio, lengths, noise_mode="const", truncation_psi=truncation_psi).float().cpu()
        face = ((img[0] + 1) / 2).clamp(0, 1)
        target = out / f"{file.stem}.png"
        vutils.save_image(face, target)
        written.append(target)
        faces.append(face)
    if faces:
        vutils.save_image(torch.stack(faces), out / "grid.png", nrow=grid_columns, padding=2, pad_value=1.0)
    return written, errors


class TrainingFrontEnd:
    """A file -> the model's input exactly as training saw a held-out clip: the checkpoint datamodule's
    AudioFrontEnd (load, VAD, features; as datamodules.prepare builds it), the float16 rounding of the
    prepared shards, and tiling of short clips to `eval_min_frames` (as the val/test loaders)."""

    def __init__(self, features: dict, vad: dict, eval_min_frames: int):
        from datamodules.audio import AudioFeatures, AudioFrontEnd

        self.front = AudioFrontEnd(AudioFeatures(**features), **vad)
        self.eval_min_frames = eval_min_frames

    def __call__(self, path) -> torch.Tensor:
        from datamodules.audio import tile_to_min

        feats = self.front(path).to(torch.float16).float()
        return tile_to_min(feats, self.eval_min_frames)


def front_end_of(ckpt: str | Path, overrides: dict | None = None) -> TrainingFrontEnd:
    """The training-time audio path of a checkpoint, from its stored datamodule configuration."""
    from experiments.evaluate import build_datamodule

    dm = build_datamodule(ckpt, overrides, setup=False)
    return TrainingFrontEnd(dm.features, dm.vad, dm.eval_min_frames)


def run(cfg: DictConfig) -> int:
    from experiments.evaluate import load_model, pick_device

    files = list_audio(cfg.audio)
    model = load_model(cfg.ckpt, pick_device(cfg.device))
    front = front_end_of(cfg.ckpt, OmegaConf.to_container(cfg.data_overrides))
    written, errors = generate_faces(model, front, files, cfg.out, cfg.truncation_psi, cfg.grid_columns)
    for path in written:
        print(path)
    for file, reason in errors.items():
        print(f"error: {file}: {reason}", file=sys.stderr)
    if written:
        print(f"{len(written)} face(s) and grid.png in {cfg.out}")
    return 1 if errors or not written else 0


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
