"""Writes the embedded corpus in the on-disk layouts of VoxCeleb1 and VGGFace (see the package docstring)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.faces import LANDMARK_COLUMNS as FACE_POINTS
from datamodules.synthetic.faces import render_face
from datamodules.synthetic.traits import Identity, sample_identities, write_attributes
from datamodules.synthetic.voices import SAMPLE_RATE, make_utterance

GENERATOR_VERSION = "3"  # bump whenever the output for a given (identities, seed) changes: it keys the cache
# 3: faces rendered at 256 px (were 128), so that 256 px crops are sharp
META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")
LANDMARK_COLUMNS = ("path", *FACE_POINTS)  # the columns datamodules.faces reads
_VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # YouTube id alphabet


def _write_wav(path: Path, wav: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(wav, -1, 1) * 32767).round().astype("<i2").tobytes())


def _build_identity(job: tuple[Identity, str | None, str]) -> list[list[str]]:
    """Write one identity's WAVs and JPEGs under `root`; returns its landmarks rows. Seeded by the identity
    alone, so the files do not depend on which worker runs it or in what order."""
    ident, vox_id, root = job
    voice_rng, face_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(ident.seed).spawn(2))
    if ident.has_voice:
        videos = ["".join(voice_rng.choice(list(_VIDEO_ID_CHARS), 11)) for _ in range(voice_rng.integers(1, 4))]
        counts = dict.fromkeys(videos, 0)
        for _ in range(voice_rng.integers(4, 9)):
            video = videos[voice_rng.integers(len(videos))]
            counts[video] += 1
            folder = Path(root, "voxceleb1", "wav", vox_id, video)
            folder.mkdir(parents=True, exist_ok=True)
            _write_wav(folder / f"{counts[video]:05d}.wav", make_utterance(ident.traits, voice_rng))
    rows = []
    if ident.has_face:
        folder = Path(root, "vggface", ident.name)
        folder.mkdir(parents=True)
        for k in range(1, face_rng.integers(8, 13) + 1):
            image, landmarks = render_face(ident.traits, face_rng)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=92)
            (folder / f"{k:05d}.jpg").write_bytes(buffer.getvalue())
            rows.append([f"{ident.name}/{k:05d}.jpg", *(f"{v:.2f}" for v in landmarks.reshape(-1))])
    return rows


def generate_corpus(out_dir: str | Path, identities: int = 48, seed: int = 0, workers: int = 2) -> Path:
    """Generate the corpus into `out_dir` (which must not exist, or be empty) and return it.

    Built in a temporary folder beside `out_dir` and renamed into place at the end, so an interrupted run
    leaves no partial corpus. Identities are spread over `workers` processes; the output is bitwise
    identical for any number of workers.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; pick a new --out")
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    people = sample_identities(identities, seed)
    voiced = sorted(p.name for p in people if p.has_voice)
    vox_ids = {name: f"id{10001 + i}" for i, name in enumerate(voiced)}  # ids follow name order, as in VoxCeleb1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    (tmp / ".owner").write_text(f"{os.getpid()}\n")
    try:
        jobs = [(p, vox_ids.get(p.name), str(tmp)) for p in people]
        if workers == 1:
            results = [_build_identity(job) for job in jobs]
        else:  # spawn: workers start clean, whatever threads the caller runs (fork is used only inside them)
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.map(_build_identity, jobs, chunksize=1)
        _write_tables(tmp, people, vox_ids, [row for rows in results for row in rows], identities, seed)
        (tmp / ".owner").unlink()
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def remove_stale_partials(out_dir: Path) -> list[Path]:
    """Remove the temporary folders of earlier generations of `out_dir` whose process is gone (a killed run
    left tens of MB behind); those of a live process are left alone. Returns the removed folders."""
    removed = []
    for folder in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            pid = int((folder / ".owner").read_text())
            os.kill(pid, 0)  # raises when no such process
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):  # no owner file (an older version) or unreadable: only if old
            if time.time() - folder.stat().st_mtime < 3600:
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _write_tables(
    root: Path,
    people: list[Identity],
    vox_ids: dict[str, str],
    landmark_rows: list[list[str]],
    identities: int,
    seed: int,
) -> None:
    by_name = {p.name: p for p in people}
    with open(root / "vox1_meta.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(META_HEADER)
        for name, vox_id in vox_ids.items():
            traits = by_name[name].traits
            # "Set" mirrors VoxCeleb1's verification split (~1 in 8 test); the letter split ignores it.
            w.writerow(
                [
                    vox_id,
                    name,
                    traits["sex"],
                    traits["nationality"],
                    "test" if by_name[name].seed % 8 == 0 else "dev",
                ]
            )
    write_attributes(root / "attributes.csv", people)
    with open(root / "landmarks.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LANDMARK_COLUMNS)
        w.writerows(sorted(landmark_rows))
    info = {"generator_version": GENERATOR_VERSION, "identities": identities, "seed": seed}
    (root / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")


def ensure_corpus(cache_root: str | Path, identities: int = 48, seed: int = 0) -> Path:
    """The cached corpus for (identities, seed, GENERATOR_VERSION) in `cache_root`, made on first use."""
    target = Path(cache_root) / f"synthetic-v{GENERATOR_VERSION}-n{identities}-s{seed}"
    if target.is_dir():
        return target
    try:
        return generate_corpus(target, identities=identities, seed=seed)
    except OSError:  # another process finished the same corpus first: the rename found it in place
        if (target / "synthetic.json").is_file():
            return target
        raise
