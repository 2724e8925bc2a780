"""Clips per second of the batched torch features vs python_speech_features on the same clips, same run.

    python bench/audio_features.py [--clips 200] [--seconds 8] [--batch 4] [--threads 1 2] [--repeats 3]

Both sides compute the same thing (checked: the features agree), normalisation included:
- logmel: 64 bands 20-7200 Hz, 25 ms Hamming, 10 ms hop, nfft 1024, pre-emphasis 0.95;
  psf: log(fbank(winfunc=numpy.hamming)), then per-band mean/variance normalisation in numpy.
- mfcc: 13 cepstra of 40 bands, 20 ms Hamming, nfft 512, pre-emphasis 0.95 + Δ + ΔΔ (K = 2);
  psf: mfcc(ceplifter=0, appendEnergy=False) + delta + delta, then normalisation.
psf runs one clip at a time (numpy); torch runs batches of --batch clips on the CPU with each of --threads
intra-op threads, and on CUDA when present. On the CPU the module takes its banded path (chunks of frames, one
product per filter block); the "dense" rows run the same module with its reference path (one FFT of all
frames, one dense filterbank product) in its place, so the gain of the fast path is read off the same run.
One warm-up pass each before timing; best of --repeats.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import python_speech_features as psf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.audio import AudioFeatures  # noqa: E402

SR = 16000


def make_clips(n: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-band noise bursts with a moving resonance; the content does not change the cost."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.5 * t)) * t)
    clips = 0.1 * rng.standard_normal((n, len(t))) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.2 * tone
    return clips.astype(np.float32)


def normalise(f: np.ndarray) -> np.ndarray:
    return (f - f.mean(0)) / (f.std(0) + 1e-5)


def psf_logmel(x):
    return normalise(np.log(psf.fbank(32768 * x, SR, 0.025, 0.01, 64, 1024, 20, 7200, 0.95, np.hamming)[0]))


def psf_mfcc(x):
    c = psf.mfcc(32768 * x, SR, 0.02, 0.01, 13, 40, 512, 20, 7200, 0.95, 0, False, np.hamming)
    d1 = psf.delta(c, 2)
    return normalise(np.concatenate([c, d1, psf.delta(d1, 2)], 1))


def time_psf(fn, clips, repeats):
    fn(clips[0].astype(np.float64))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in clips:
            fn(x.astype(np.float64))
        best = min(best, time.perf_counter() - start)
    return len(clips) / best


@torch.no_grad()
def time_torch(module, clips, batch, repeats, device):
    wavs = torch.from_numpy(clips).to(device)
    lengths = torch.full((len(clips),), clips.shape[1], device=device)

    def run():
        for i in range(0, len(wavs), batch):
            module(wavs[i : i + batch], lengths[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return len(clips) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    clips = make_clips(args.clips, args.seconds)
    runs = [("cpu", n) for n in args.threads] + ([("cuda", None)] if torch.cuda.is_available() else [])
    print(f"{args.clips} clips of {args.seconds:g} s, torch {torch.__version__}, batches of {args.batch}")
    print(f"{'features':8} {'psf clips/s':>12} {'device':>16} {'torch clips/s':>14} {'ratio':>7}")
    for kind, reference in (("logmel", psf_logmel), ("mfcc", psf_mfcc)):
        module = AudioFeatures(kind)
        ours = module(torch.from_numpy(clips[:1]))[0][0].T.double().numpy()
        gap = np.abs(ours - reference(clips[0].astype(np.float64))).max()
        if gap > 1e-2:
            raise SystemExit(f"{kind}: torch and psf features differ by {gap:.3g}; timings would not compare")
        base = time_psf(reference, clips, args.repeats)
        dense = AudioFeatures(kind)
        dense.mel_banded = dense.mel_dense
        for device, threads in runs:
            if threads:
                torch.set_num_threads(threads)
            batch = args.clips if device == "cuda" else args.batch
            for path, m in (("", module), (" dense", dense)) if threads else (("", module),):
                rate = time_torch(m.to(device), clips, batch, args.repeats, torch.device(device))
                where = (f"cpu x{threads}" if threads else device) + path
                print(f"{kind:8} {base:12.1f} {where:>16} {rate:14.1f} {rate / base:6.1f}x")


if __name__ == "__main__":
    main()
