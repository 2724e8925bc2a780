"""Preprocessing throughput on the embedded corpus, projected to the full VoxCeleb1 ∩ VGGFace data.

    python bench/prepare.py [--identities 32] [--workers 2]

Times `datamodules.prepare.prepare` (VAD + log-mel features per clip, file-landmark alignment per face) with
1 worker (the baseline) and with `--workers`, and projects each to 149,354 clips + 139,572 faces by
splitting the wall time between clips and faces in proportion to their single-process cost; clip rates
are rescaled from the corpus' mean clip duration to VoxCeleb1's (352 h / 153,516 clips ≈ 8.25 s). The
one-off start of the worker pool (spawned processes importing torch) is timed apart and left out of the rates.
MTCNN (real data) is timed separately per image on the corpus images (256×256) when facenet-pytorch is importable.
"""

import argparse
import shutil
import tempfile
import time
import wave
from pathlib import Path

from datamodules import prepare as P
from datamodules.audio import AudioFeatures, AudioFrontEnd
from datamodules.faces import FaceAligner, FaceError
from datamodules.shards import preprocessing_config
from datamodules.synthetic import ensure_corpus

FULL_CLIPS, FULL_FACES = 149_354, 139_572
REAL_CLIP_S = 352 * 3600 / 153_516  # VoxCeleb1 mean clip duration, s


def per_item(fn, items):
    t = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t) / len(items)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    corpus = ensure_corpus(tmp / "corpus", identities=a.identities, seed=0)
    wavs = sorted((corpus / "voxceleb1" / "wav").rglob("*.wav"))
    imgs = sorted((corpus / "vggface").rglob("*.jpg"))
    clip_s = sum(wave.open(str(w)).getnframes() / 16000 for w in wavs) / len(wavs)
    front = AudioFrontEnd(AudioFeatures("logmel"))
    aligner = FaceAligner("file", 64, corpus / "landmarks.csv")
    s_clip = per_item(front, wavs[:40])
    s_face = per_item(lambda p: aligner(p, p.relative_to(corpus / "vggface").as_posix()), imgs[:80])
    t = time.perf_counter()
    config = preprocessing_config("file", 64, {"kind": "logmel"}, {})
    with P.get_context("spawn").Pool(a.workers, P._init, (config, corpus, tmp / "warm")) as pool:
        pool.map(abs, range(4 * a.workers))  # every worker up and initialised
    startup = time.perf_counter() - t
    print(f"corpus: {len(wavs)} clips of mean {clip_s:.2f} s, {len(imgs)} faces; pool start {startup:.1f} s")
    rows = []
    for w in (1, a.workers):
        t = time.perf_counter()
        m = P.prepare(corpus, tmp / f"out{w}", detector="file", workers=w, progress=False)
        wall = time.perf_counter() - t - (startup if w > 1 else 0.0)
        n_c, n_f = m["counts"]["clips"], m["counts"]["faces"]
        share = n_c * s_clip / (n_c * s_clip + n_f * s_face)  # of the wall time spent on clips
        clips_s, faces_s = n_c / (wall * share) * clip_s / REAL_CLIP_S, n_f / (wall * (1 - share))
        hours = (FULL_CLIPS / clips_s + FULL_FACES / faces_s) / 3600
        rows.append((w, n_c, n_f, wall, clips_s, faces_s, hours))
    print(f"{'workers':>7} {'clips':>6} {'faces':>6} {'wall s':>7} {'clips/s':>8} {'faces/s':>8} {'full h':>7}")
    for r in rows:
        print(f"{r[0]:>7} {r[1]:>6} {r[2]:>6} {r[3]:>7.1f} {r[4]:>8.1f} {r[5]:>8.1f} {r[6]:>7.2f}")
    print(
        f"speed-up {a.workers} vs 1 worker: {rows[0][3] / rows[1][3]:.2f}x; target <= 2 h: "
        f"{'met' if rows[1][6] <= 2 else 'missed'}"
    )
    try:
        mtcnn, found = FaceAligner("mtcnn", 64), []

        def detect(p):  # drawn faces often fool MTCNN: the time per image counts either way
            try:
                found.append(mtcnn(p))
            except FaceError:
                pass

        s_mtcnn = per_item(detect, imgs[:20])
        print(f"mtcnn found a face in {len(found)}/20 drawn images")
        print(
            f"mtcnn detection+alignment, 1 process: {1 / s_mtcnn:.1f} faces/s "
            f"(file landmarks: {1 / s_face:.1f}); full faces with mtcnn on {a.workers} workers ≈ "
            f"{FULL_FACES * s_mtcnn / a.workers / 3600:.2f} h"
        )
    except ImportError as e:
        print(f"mtcnn not timed: {e}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
