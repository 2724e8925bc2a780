"""Faces from your own audio: `python -m experiments.generate ckpt=PATH audio=FILE|DIR out=DIR`.

Each input goes through the checkpoint's own audio front end (load -> VAD -> features, as in training),
then the EMA generator. Writes one PNG per input, named after the whole input file name (`a.wav` ->
`a.wav.png`, so `a.wav` and `a.flac` both keep their face), then `grid.png` and `manifest.json` last: a folder
that holds the manifest is complete. Each PNG is written under a temporary name and renamed, so a killed run
leaves no truncated image; an `out` folder that already holds files is refused unless `overwrite=true`. A file
that cannot be read or holds no speech is reported by name and reason, and the command exits non-zero.

No speech: silero-vad (datamodules/speech_check.py) must find at least 250 ms of speech, or the file is reported
as "no speech found"; the front end's webrtcvad alone passes noise. Recordings at any rate from 8 to 192 kHz
(44.1 and 48 kHz included) are resampled to 16 kHz. Short clips follow the held-out protocol of training
(Wen et al.'s test rule, as the val/test loaders apply it): after the VAD, speech under `min_speech_s` (1 s) is
refused by name; longer speech shorter than `eval_min_frames` (1000 frames, 10 s) is tiled up to it, and the
manifest gives each face's seconds of speech.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
import torchvision.utils as vutils
from omegaconf import DictConfig, OmegaConf

from datamodules.audio import AUDIO_SUFFIXES, AudioError, load_audio
from datamodules.cli_errors import one_line_errors
from datamodules.files import folder_lock, unreadable_reason, write_atomic
from datamodules.pipeline import VoicePipeline, checkpoint_data_hparams
from datamodules.speech_check import SAMPLE_RATE as SPEECH_RATE
from datamodules.speech_check import SpeechCheck
from experiments.schema import check_command_config, check_data_overrides
from lightning_modules.io.safe_load import load_data
from lightning_modules.voice2face_checkpoint import check_features, model_from_checkpoint, read_checkpoint

# In a folder, files of these kinds are taken too, so that one libsndfile cannot read is reported by name (an .m4a)
# instead of left out without a word; libsndfile 1.1+ reads .mp3.
OTHER_AUDIO = (".mp3", ".m4a", ".aac", ".opus", ".wma", ".amr", ".aif", ".aiff")


def list_audio(audio: str | Path) -> list[Path]:
    path = Path(audio)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES + OTHER_AUDIO)
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder")
        return files
    reason = unreadable_reason(path)
    if reason != "no such file":  # a FIFO, a symlink loop, a broken link: each named, not "no such file"
        raise ValueError(f"{path}: {reason}; audio= must name an audio file or a folder of them")
    raise FileNotFoundError(f"{path}: no such audio file or folder")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix this run's faces with files already in `out` (unless told to overwrite them); the lock file
    of an earlier or the present run (folder_lock) does not count."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: out= must be a folder, and this is a file")
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out}: the folder already holds files (an earlier run?); choose an empty or new "
            "out= folder, or pass overwrite=true to replace faces of the same names"
        )


def save_png(image: torch.Tensor, target: Path, **kwargs) -> None:
    """save_image through a temporary name in the same folder and an atomic rename."""
    write_atomic(target, lambda tmp: vutils.save_image(image, tmp, format="png", **kwargs))


@torch.no_grad()
def embed_in_windows(model, feats: torch.Tensor, window_frames: int = 6000) -> torch.Tensor:
    """Voice embedding [1, D] of features [F, T] with memory bounded by one window: windows of `window_frames`
    (a short tail joins the last one) are embedded one at a time and averaged, weighted by their frames. The
    encoder ends in a mean over time and a linear layer, so this equals the whole clip's embedding up to the
    receptive field at each window edge; a clip within one window is embedded whole."""
    starts = list(range(0, feats.shape[-1], window_frames))
    if len(starts) > 1 and feats.shape[-1] - starts[-1] < window_frames // 2:
        starts.pop()  # the tail joins the window before it
    ends = [*starts[1:], feats.shape[-1]]
    total, weight = 0.0, 0
    for a, b in zip(starts, ends):
        part = feats[None, :, a:b].to(model.device, torch.float32)
        total = total + model.embed(part, torch.tensor([b - a], device=model.device)) * (b - a)
        weight += b - a
    return total / weight


def voice_features(front_end, file, speech_check: SpeechCheck | None = None) -> tuple[torch.Tensor, float | None]:
    """(features [F, frames] through the checkpoint's front end, seconds of speech or None without a check) of an
    audio file; AudioError naming it when it is unreadable, too short or holds no speech."""
    seconds = None
    if speech_check is not None:
        seconds = round(speech_check.speech_seconds(file, load_audio(file, SPEECH_RATE)), 2)
    return front_end(str(file)), seconds


@torch.no_grad()
def generate_faces(
    model,
    front_end,
    files: list[Path],
    out: str | Path,
    truncation_psi: float = 1.0,
    grid_columns: int = 8,
    window_frames: int = 6000,  # longer clips are embedded in windows of this many frames (memory stays bounded)
    speech_check: SpeechCheck | None = None,  # refuses a file without speech (None: the front end's VAD only)
) -> tuple[list[Path], dict[str, str]]:
    """Write out/<file name>.png per readable input, then out/grid.png and out/manifest.json; return (written
    PNGs, {file: error}). The manifest gives each face's seconds of speech where `speech_check` measured them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # present again only once this run is complete
    written, errors, faces, speech = [], {}, [], {}
    for file in files:
        try:
            feats, seconds = voice_features(front_end, file, speech_check)
        except AudioError as err:
            errors[str(file)] = err.reason
            continue
        if seconds is not None:
            speech[str(file)] = seconds
        emb = embed_in_windows(model, feats, window_frames)
        img = model.generate_from(emb, noise_mode="const", truncation_psi=truncation_psi).float().cpu()
        face = ((img[0] + 1) / 2).clamp(0, 1)
        target = out / f"{file.name}.png"
        try:
            save_png(face, target)
        except OSError as err:  # a name past the file system's limit, a full disk: this file, not the batch
            errors[str(file)] = f"its face could not be written to {target.name} ({err.strerror or err})"
            continue
        written.append(target)
        faces.append(face)
    if faces:
        save_png(torch.stack(faces), out / "grid.png", nrow=grid_columns, padding=2, pad_value=1.0)
    manifest = {
        "faces": {str(f): str(w) for f, w in zip([f for f in files if str(f) not in errors], written)},
        "errors": errors,
        "speech_seconds": {f: t for f, t in speech.items() if f not in errors},
        "grid": "grid.png" if faces else None,
    }
    write_atomic(out / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return written, errors


def front_end_of(ckpt: str | Path | dict, overrides: dict | None = None) -> VoicePipeline:
    """The training-time voice pipeline of a checkpoint (a path, or one read by read_checkpoint): load, VAD,
    features and the shards' float16 rounding as prepare stored them, short clips tiled as the held-out loaders
    tile them. `overrides` may replace only the datamodule arguments the pipeline is built from."""
    state = ckpt if isinstance(ckpt, dict) else load_data(ckpt, "a voice2face checkpoint")
    check_data_overrides(overrides or {})
    ignored = sorted(set(overrides or {}) - set(VoicePipeline.DATA_ARGS))
    if ignored:
        raise ValueError(
            f"config: data_overrides: {ignored} do not change what generate does (only "
            f"{list(VoicePipeline.DATA_ARGS)} shape its voice pipeline); drop them"
        )
    where = "the checkpoint" if isinstance(ckpt, dict) else ckpt
    return VoicePipeline.of({**checkpoint_data_hparams(state, where), **(overrides or {})})


def run(cfg: DictConfig) -> int:
    check_command_config(cfg, "generate")
    files = list_audio(cfg.audio)
    check_out(Path(cfg.out), cfg.get("overwrite", False))  # before the lock creates the folder
    busy = "wait for that generate to end, or choose another out= folder"
    with folder_lock(Path(cfg.out), "out folder", busy):  # two runs into one folder mixed their faces
        check_out(Path(cfg.out), cfg.get("overwrite", False))  # again: the other run may have written meanwhile
        state = read_checkpoint(cfg.ckpt)  # read once, for the model and its voice pipeline
        model = model_from_checkpoint(state, cfg.device)
        front = front_end_of(state, OmegaConf.to_container(cfg.data_overrides))
        check_features(model, front.n_features, "the voice pipeline (with data_overrides)")
        check = SpeechCheck() if cfg.speech_check else None
        window = round(cfg.window_seconds * 100)
        args = (cfg.truncation_psi, cfg.grid_columns, window, check)
        written, errors = generate_faces(model, front, files, cfg.out, *args)
    for path in written:
        print(path)
    for file, reason in errors.items():
        print(f"error: {file}: {reason}", file=sys.stderr)
    if written:
        print(f"{len(written)} face(s), grid.png and manifest.json in {cfg.out}")
    return 1 if errors or not written else 0


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
