"""Raw VoxCeleb1 + VGGFace folders -> a cached dataset of one shard per identity.

    python -m datamodules.prepare --root DIR --out DIR [--detector mtcnn|file|none] [--face-size 64]
                                  [--face-align arcface|ffhq] [--features logmel|mfcc] [--workers 2]

Input (`root`): vox1_meta.csv (tab-separated, columns `VoxCeleb1 ID`, `VGGFace1 ID`), voxceleb1/wav/<id>/<v>/
<n>.wav, vggface/<VGGFace1 ID>/<image>.jpg, and landmarks.csv for detector=file.
Output (`out`): the prepared folder of `datamodules.shards` (one shard per identity, config.json, manifest.json).

Why one torch file per identity rather than litdata: the training loader needs all clips and faces of one
identity together (a voice and an independent face of the same person), the shards are read with
torch.load(mmap=True) so nothing is copied until used, and a shard is a natural unit of resumption.
Why features and not waveforms: training reads each clip many times and the features cost more than the
crop; stored float16 features are 64·2 B per 10 ms against 160·2 B of int16 waveform.

Resumable: every file is written to a temporary name and renamed, so a shard exists only when complete; a
re-run skips the shards present and, since each shard depends only on its inputs and the config, ends
with the same files as an uninterrupted run. Each shard records the fingerprint of its inputs (paths, sizes,
modification times, config): a shard whose inputs changed (a replaced WAV) is made again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from multiprocessing import get_context
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from datamodules.audio import AUDIO_SUFFIXES, AudioError
from datamodules.cli_errors import one_line_errors
from datamodules.faces import ALIGNS, FaceAligner, FaceError, SkipReport
from datamodules.files import DataError
from datamodules.meta import identity_split, read_meta
from datamodules.pipeline import VoicePipeline
from datamodules.shards import (
    claim,
    face_align_of,
    preprocessing_config,
    read_shard,
    shard_file,
    shard_inputs,
    write_manifest,
    write_shard,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def scan(root) -> tuple[list[dict], dict[str, list[Path]], dict[str, list[Path]]]:
    """(meta rows, {vox id: wav files}, {face name: image files}), sorted; missing folders raise DataError."""
    root = Path(root)
    wav_dir, face_dir = root / "voxceleb1" / "wav", root / "vggface"
    for d in (wav_dir, face_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found; `root` must hold vox1_meta.csv, voxceleb1/wav and vggface")
    rows = read_meta(root / "vox1_meta.csv")
    voices = {
        d.name: sorted(p for p in walk_files(d) if p.suffix.lower() in AUDIO_SUFFIXES)
        for d in sorted(wav_dir.iterdir())
        if d.is_dir()
    }
    faces = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(face_dir.iterdir())
        if d.is_dir()
    }
    return rows, {k: v for k, v in voices.items() if v}, {k: v for k, v in faces.items() if v}


def walk_files(folder: Path) -> list[Path]:
    """Every file below `folder`, following symlinked folders (a video folder linked in from elsewhere is part
    of its identity) but entering each real folder once, so a link back up cannot loop."""
    seen, found = set(), []
    for here, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(here)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            dirs[:] = []
            continue
        seen.add(key)
        dirs.sort()
        found += [Path(here) / f for f in files]
    return found


def fingerprint(root: Path, files: list[Path], digest: str) -> str:
    """What a shard was made from: each input's path, size and modification time, and the preprocessing config
    (plus landmarks.csv, which detector=file reads). A shard whose fingerprint differs is made again."""
    extra = [root / "landmarks.csv"] if (root / "landmarks.csv").is_file() else []
    parts = [digest]
    for f in [*files, *extra]:
        info = f.stat()
        parts.append(f"{f.relative_to(root).as_posix()}|{info.st_size}|{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def is_current(shard: Path, inputs: str) -> bool:
    """True when `shard` exists and was made from exactly these inputs."""
    return shard_inputs(shard) == inputs


class _Worker:
    """Builds one identity's shard; holds the voice pipeline and the face aligner (one per process)."""

    def __init__(self, config: dict, root: Path, out: Path):
        self.config, self.root, self.out = config, root, out
        self.voices = VoicePipeline(config["features"], config["vad"])
        landmarks = root / "landmarks.csv" if config["detector"] == "file" else None
        self.aligner = FaceAligner(config["detector"], config["face_size"], landmarks, align=face_align_of(config))

    def __call__(self, job: tuple[str, list[Path], list[Path], str]) -> str:
        name, wavs, images, inputs = job
        skipped = SkipReport()
        feats, clips = [], []
        for w in wavs:
            try:
                feats.append(self.voices.stored(w))
                clips.append(str(w.relative_to(self.root)))
            except AudioError as e:
                skipped.add(w.relative_to(self.root), e.reason)
        faces, kept = [], []
        for p in images:
            key = str(p.relative_to(self.root / "vggface"))
            try:
                faces.append(torch.from_numpy(self.aligner(p, key)))
                kept.append(str(p.relative_to(self.root)))
            except FaceError as e:
                skipped.add(p.relative_to(self.root), e.reason)
        # inputs: the fingerprint, so that a later run redoes the shard when an input file changes
        write_shard(
            shard_file(self.out, name),
            feats,
            faces,
            clips,
            kept,
            skipped.items,
            inputs,
            self.voices.n_features,
            self.config["face_size"],
        )
        return name


_worker: _Worker | None = None


def _init(config, root, out):
    global _worker
    # The pool is the parallelism: one thread per worker avoids oversubscription, and keeps the float results (and
    # so the shard bytes) the same whatever OMP_NUM_THREADS or `workers` a resumed run has.
    torch.set_num_threads(1)
    _worker = _Worker(config, root, out)


def _run(job):
    return _worker(job)


def prepare(
    root,
    out,
    detector: str = "mtcnn",
    face_size: int = 64,
    features: dict | None = None,
    vad: dict | None = None,
    face_align: str = "arcface",  # the crop template, datamodules.faces.ALIGNS
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Preprocess `root` into `out` (resuming whatever is there); returns the manifest."""
    root, out = Path(root), Path(out)
    config = preprocessing_config(detector, face_size, features, vad, face_align)
    digest = claim(out, config, root)

    rows, voices, faces = scan(root)
    ids = {r["VGGFace1 ID"]: r["VoxCeleb1 ID"] for r in rows}
    no_face = sorted(n for n, v in ids.items() if v in voices and n not in faces)
    no_voice = sorted(n for n, v in ids.items() if v not in voices and n in faces)
    names = sorted(n for n, v in ids.items() if v in voices and n in faces)
    jobs = [(n, voices[ids[n]], faces[n], fingerprint(root, [*voices[ids[n]], *faces[n]], digest)) for n in names]
    todo = [job for job in jobs if not is_current(shard_file(out, job[0]), job[3])]
    if todo:
        bar = tqdm(total=len(names), initial=len(names) - len(todo), desc="prepare", unit="id", disable=not progress)
        if workers > 1:
            with get_context("spawn").Pool(workers, _init, (config, root, out)) as pool:
                for _ in pool.imap_unordered(_run, todo):
                    bar.update()
        else:  # one thread as in the pool's workers, so the bytes do not depend on `workers`
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                worker = _Worker(config, root, out)
                for job in todo:
                    worker(job)
                    bar.update()
            finally:
                torch.set_num_threads(threads)
        bar.close()
    return _write_manifest(out, root, digest, names, no_face, no_voice)


def _write_manifest(out: Path, root: Path, digest: str, names, no_face, no_voice) -> dict:
    skipped, per_id, empty = SkipReport(), {}, []
    for n in names:
        shard = read_shard(shard_file(out, n))
        skipped.extend(SkipReport(shard.skipped))
        per_id[n] = {"clips": shard.num_clips, "faces": len(shard.images)}
        if not per_id[n]["clips"] or not per_id[n]["faces"]:
            empty.append(n)
    usable = [n for n in names if n not in empty]
    split = identity_split(root / "vox1_meta.csv", usable)
    manifest = {
        "config_hash": digest,
        "identities": per_id,
        "usable": usable,
        "split_sizes": {k: len(v) for k, v in split.items()},
        "counts": {
            "identities": len(usable),
            "clips": sum(per_id[n]["clips"] for n in usable),
            "faces": sum(per_id[n]["faces"] for n in usable),
            "skipped": len(skipped),
            "dropped_voice_without_face": len(no_face),
            "dropped_face_without_voice": len(no_voice),
            "dropped_nothing_usable": len(empty),
        },
        "skip_reasons": skipped.counts(),
        "skipped": [list(i) for i in skipped.items],
        "dropped": {"voice_without_face": no_face, "face_without_voice": no_voice, "nothing_usable": empty},
    }
    write_manifest(out, manifest)
    return manifest


SCHEMA = Path(__file__).resolve().parents[1] / "experiments" / "conf" / "schema.yaml"


def face_sizes() -> list[int]:
    """The face sizes the networks build (data.face_size's domain in the config schema): shards of another size
    could never be trained on, and a size below 1 px failed deep in the warp with "Singular matrix"."""
    return list(OmegaConf.load(SCHEMA)["$defs"]["resolution"]["enum"])


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="folder with vox1_meta.csv, voxceleb1/wav, vggface")
    ap.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    ap.add_argument("--detector", default="mtcnn", choices=("mtcnn", "file", "none"))
    ap.add_argument("--face-size", type=int, default=64, choices=face_sizes(), metavar="{4,8,...,1024}")
    ap.add_argument("--face-align", default="arcface", choices=ALIGNS, help="ffhq: FFHQ's, for a pretrained StyleGAN2")
    ap.add_argument("--features", default="logmel", choices=("logmel", "mfcc"))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    m = prepare(
        a.root, a.out, a.detector, a.face_size, {"kind": a.features}, face_align=a.face_align, workers=a.workers
    )
    print(
        json.dumps(
            {"counts": m["counts"], "split_sizes": m["split_sizes"], "skip_reasons": m["skip_reasons"]},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
