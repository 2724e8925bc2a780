"""Audio front end: WAV -> 16 kHz mono -> webrtcvad speech -> batched log-mel / MFCC+Δ+ΔΔ -> crops.

Conventions (chosen so that the features equal python_speech_features' on the same samples):
- Waveforms are float32 in [-1, 1]; power spectra are taken in int16 units (x·32768), as both
  python_speech_features users and Wen et al. read their WAVs: psf on 32768·x with the same parameters and
  the raw (un-normalised) features agree, and Wen's log floor of 1e-5 keeps its meaning (a log-0 guard).
- Frames start at sample 0 and step by the hop, the last one zero-padded (no centring):
  frames(L) = 1 + ceil((L − win) / hop) for L > win, else 1.
- Mel filters are triangles on FFT bins floor((n_fft + 1)·f / sr) with m = 2595·log10(1 + f/700).
- Any sample rate of at least 8 kHz is resampled to 16 kHz (8 kHz telephone audio then has no energy
  above 4 kHz; it is kept, not rejected); stereo is averaged to mono; PCM 16/24/32-bit and float WAVs load.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import webrtcvad
from torch import Tensor, nn

from datamodules.files import unreadable_reason

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # what libsndfile reads (VoxCeleb2's .m4a is AAC: convert it first)
INT16_SCALE = 32768.0  # float sample -> int16 units
MIN_SAMPLE_RATE = 8000  # below this there is no speech band left to resample
MAX_SAMPLE_RATE = 768000  # the highest rate recorders write; above it a header is damaged, and the bounded
# resampling ratio (resample_ratio) of 16 kHz to it would round to 0


class AudioError(ValueError):
    """A file that cannot serve as speech: `.path` names it, `.reason` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ---------------------------------------------------------------------------------------------------------
# Loading


def _wav_data_chunk(path: str) -> tuple[str, int, int, int] | None:
    """(byte order, offset of the data chunk's header, the length it declares, the file's size) of a RIFF/WAVE
    file, read from its chunk headers alone; None for any other file."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(f.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, n = struct.unpack(endian + "4sI", f.read(8))
            if chunk == b"data":
                return endian, pos, n, size
            pos += 8 + n + (n & 1)  # chunks are word-aligned
    return None


STREAMED = (0, 0xFFFFFFFF)  # data lengths a writer of a stream leaves, not knowing the length


def _wav_truncation(path: str) -> str | None:
    """The reason a RIFF/WAVE file is cut short (its data chunk declares more bytes than the file holds), else
    None. libsndfile silently reads what is there, so this is checked from the chunk headers."""
    found = _wav_data_chunk(path)
    if found is None or found[2] in STREAMED:
        return None
    _, pos, n, size = found
    present = size - pos - 8
    return f"truncated WAV: data chunk declares {n} bytes, the file holds {present}" if present < n else None


def _streamed_wav(path: str) -> io.BytesIO | None:
    """A RIFF/WAVE file whose data chunk declares 0 (or 0xFFFFFFFF) bytes, as a recorder writing a stream leaves
    it, with samples after it: the file in memory with the chunk's true length, which libsndfile then reads (it
    reads 0 samples from the file as written). None for any other file."""
    found = _wav_data_chunk(path)
    if found is None or found[2] not in STREAMED or found[3] - found[1] - 8 <= 0:
        return None
    endian, pos, _, size = found
    fixed = bytearray(Path(path).read_bytes())
    struct.pack_into(endian + "I", fixed, pos + 4, size - pos - 8)
    struct.pack_into(endian + "I", fixed, 4, size - 8)  # the RIFF size, which such writers leave too
    return io.BytesIO(bytes(fixed))


def load_audio(path, sample_rate: int = 16000) -> Tensor:
    """Read an audio file as float32 mono [T] at `sample_rate` (stereo averaged, other rates resampled)."""
    path = str(path)
    reason = unreadable_reason(path)
    if reason:
        raise AudioError(path, reason)
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # [T, C], PCM scaled to [-1, 1]
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, f"not a readable audio file ({err})") from None
    truncated = _wav_truncation(path)
    if truncated:
        raise AudioError(path, truncated)
    streamed = _streamed_wav(path) if data.shape[0] == 0 else None
    if streamed is not None:
        data, rate = sf.read(streamed, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise AudioError(path, "no samples in the file")
    if not np.isfinite(data).all():
        raise AudioError(path, "samples contain NaN or infinity")
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz")
    if rate > MAX_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {rate} Hz is above {MAX_SAMPLE_RATE} Hz (a damaged header?)")
    wav = torch.from_numpy(data.mean(axis=1))  # mono mix-down
    if rate != sample_rate:
        wav = AF.resample(wav, *resample_ratio(rate, sample_rate))
    return wav.float().contiguous()


def resample_ratio(rate: int, target: int, max_denominator: int = 1000) -> tuple[int, int]:
    """(orig, new) for torchaudio's resample with a bounded kernel. Its kernel grows with rate / gcd(rate,
    target): 44101 Hz -> 16 kHz would build gigabytes. A coprime rate is approximated by the nearest ratio with a
    denominator <= max_denominator (44101 Hz is read as 44100: a 0.002 % change of pitch and duration)."""
    ratio = Fraction(target, rate).limit_denominator(max_denominator)
    if ratio == Fraction(target, rate):
        return rate, target
    return ratio.denominator, ratio.numerator


# ---------------------------------------------------------------------------------------------------------
# Voice activity detection


def vad_trim(
    wav: Tensor,
    sample_rate: int = 16000,
    mode: int = 2,  # webrtcvad aggressiveness 0 (keeps most) .. 3 (keeps least)
    frame_ms: int = 20,  # webrtcvad accepts 10, 20 or 30 ms frames
    padding_ms: int = 50,  # smoothing window: speech starts/ends when > 90 % of it agrees
    path=None,  # named in the error
) -> Tensor:
    """The speech-bearing samples of a mono waveform, concatenated.

    A segment opens when more than 90 % of the last padding_ms/frame_ms frames are speech (those frames are
    kept too) and closes after more than 90 % of them are not (the reference's collector); a final partial
    frame is dropped. Raises AudioError when no frame is kept.
    """
    if sample_rate not in (8000, 16000, 32000, 48000) or frame_ms not in (10, 20, 30) or mode not in range(4):
        raise ValueError(
            f"webrtcvad needs rate 8/16/32/48 kHz, 10/20/30 ms, mode 0-3; got {sample_rate}, {frame_ms}, {mode}"
        )
    if wav.dim() != 1:
        raise ValueError(f"vad_trim takes a mono waveform [T], got shape {tuple(wav.shape)}")
    step = sample_rate * frame_ms // 1000
    pcm = (wav.detach().cpu().float() * INT16_SCALE).round().clamp(-32768, 32767).to(torch.int16).numpy()
    detector = webrtcvad.Vad(mode)
    flags = [detector.is_speech(pcm[i : i + step].tobytes(), sample_rate) for i in range(0, len(pcm) - step + 1, step)]

    ring = deque(maxlen=max(1, padding_ms // frame_ms))
    keep, triggered = [], False
    for i, speech in enumerate(flags):
        ring.append((i, speech))
        if not triggered and sum(s for _, s in ring) > 0.9 * ring.maxlen:
            triggered = True
            keep.extend(j for j, _ in ring)
            ring.clear()
        elif triggered:
            keep.append(i)
            if sum(not s for _, s in ring) > 0.9 * ring.maxlen:
                triggered = False
                ring.clear()
    if not keep:
        raise AudioError(path or "<waveform>", f"no speech found by the VAD (webrtcvad mode {mode})")
    index = (torch.tensor(keep)[:, None] * step + torch.arange(step)).flatten()
    return wav[index.to(wav.device)]


# ---------------------------------------------------------------------------------------------------------
# Features


def hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    """Triangular mel filters on FFT bins, float64 [n_fft//2 + 1, n_mels]; raises if a band is empty."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    edges = torch.floor((n_fft + 1) * 700.0 * (10.0 ** (mels / 2595.0) - 1.0) / sample_rate)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    if (hi - lo < 2).any():
        raise ValueError(f"{n_mels} mel bands over {f_min}-{f_max} Hz leave a band without FFT bins at n_fft={n_fft}")
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    rise = torch.where((k >= lo) & (k < mid), (k - lo) / (mid - lo).clamp_min(1), 0.0)
    fall = torch.where((k >= mid) & (k < hi), (hi - k) / (hi - mid).clamp_min(1), 0.0)
    return rise + fall


def _hold_last(x: Tensor, lengths: Tensor) -> Tensor:
    """x [B, F, N] with frames >= lengths replaced by the last valid frame (edge padding per clip)."""
    t = torch.arange(x.shape[-1], device=x.device)
    index = torch.minimum(t[None], lengths[:, None] - 1)  # [B, N]
    return x.gather(2, index[:, None].expand_as(x))


# Per-kind defaults, as experiments/conf/data/features states them: log-mel as the paper (64 bands, 25 ms) with
# Wen et al.'s nfft 1024; MFCC as the paper's method section (20 ms frames overlapping by half) with 40 bands.
KIND_DEFAULTS = {
    "logmel": dict(n_mels=64, win_ms=25.0, n_fft=1024),
    "mfcc": dict(n_mels=40, win_ms=20.0, n_fft=512),
}


class AudioFeatures(nn.Module):
    """Batched log-mel or MFCC+Δ+ΔΔ over padded waveforms, normalised per utterance and band.

    forward(wavs [B, T], lengths [B] | None) -> (feats [B, n_features, N], frame_lengths [B]); frames past a
    clip's own length are zero and never enter its statistics, so a padded batch equals each clip alone.
    """

    KIND_DEFAULTS = KIND_DEFAULTS  # what None means for n_mels, win_ms and n_fft

    def __init__(
        self,
        kind: str = "logmel",  # "logmel" or "mfcc"
        sample_rate: int = 16000,
        n_mels: int | None = None,  # mel bands (None: 64 logmel, 40 mfcc)
        win_ms: float | None = None,  # analysis window (None: 25 logmel, 20 mfcc)
        hop_ms: float = 10.0,  # frame step: 100 frames/s
        n_fft: int | None = None,  # FFT size, frames zero-padded (None: 1024 logmel, 512 mfcc)
        f_min: float = 20.0,
        f_max: float = 7200.0,
        preemphasis: float = 0.95,  # y[n] = x[n] − a·x[n−1]: the paper's 0.95 (Wen et al. 0.97)
        window: str = "hamming",  # "hamming" (symmetric, as numpy.hamming) or "rectangular"
        n_mfcc: int = 13,  # cepstra kept (mfcc only)
        delta_width: int = 2,  # K: Δ over t±K frames (mfcc only)
        log_floor: float = 1e-5,  # mel power floor before the log, int16 units
        normalize: bool = True,  # per-utterance, per-band mean/variance normalisation
        eps: float = 1e-5,  # added to the standard deviation
        band_groups: int | None = None,  # filter blocks of the banded CPU path (None: one per 16 filters)
        chunk_frames: int = 256,  # frames per FFT on the CPU: a [256, n_fft] block stays in cache
    ):
        super().__init__()
        if kind not in KIND_DEFAULTS:
            raise ValueError(f"kind must be one of {sorted(KIND_DEFAULTS)}, got {kind!r}")
        d = KIND_DEFAULTS[kind]
        self.kind, self.sample_rate = kind, sample_rate
        self.n_mels = n_mels or d["n_mels"]
        self.win = round(sample_rate * (win_ms or d["win_ms"]) / 1000)
        self.hop = round(sample_rate * hop_ms / 1000)
        self.n_fft = n_fft or d["n_fft"]
        self.preemphasis = preemphasis
        self.n_mfcc, self.delta_width = n_mfcc, delta_width
        self.log_floor, self.normalize, self.eps = log_floor, normalize, eps
        if self.win > self.n_fft:
            raise ValueError(f"window of {self.win} samples is longer than n_fft={self.n_fft}")
        if kind == "mfcc" and not 1 <= n_mfcc <= self.n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={self.n_mels}, got {n_mfcc}")
        windows = {
            "hamming": lambda n: torch.hamming_window(n, periodic=False, dtype=torch.float64),
            "rectangular": lambda n: torch.ones(n, dtype=torch.float64),
        }
        if window not in windows:
            raise ValueError(f"window must be one of {sorted(windows)}, got {window!r}")
        self.register_buffer("window", windows[window](self.win).float(), persistent=False)
        # psf's power spectrum |X|²/n_fft in int16 units, folded into the filters; each row twice, to take
        # the squared real and imaginary parts straight from the interleaved view of the spectrum.
        fb = mel_filterbank(self.n_mels, self.n_fft, sample_rate, f_min, f_max) * INT16_SCALE**2 / self.n_fft
        self.register_buffer("fbank", fb.repeat_interleave(2, 0).float(), persistent=False)  # [2·bins, n_mels]
        # The banded CPU path: consecutive filters in `band_groups` blocks, each with only the FFT bins its
        # triangles touch (a triangle spans few bins, so the dense product is ~95 % multiplications by zero).
        self.bands = []  # (first bin, end bin, first filter, end filter)
        for i, cols in enumerate(torch.arange(self.n_mels).chunk(band_groups or max(1, self.n_mels // 16))):
            rows = fb[:, cols].abs().sum(1).nonzero()[:, 0]
            lo, hi, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols[0]), int(cols[-1]) + 1
            self.bands.append((lo, hi, c0, c1))
            self.register_buffer(f"band{i}", self.fbank[2 * lo : 2 * hi, c0:c1].clone(), persistent=False)
        self.chunk_frames = chunk_frames
        if kind == "mfcc":  # orthonormal DCT-II, as scipy.fftpack.dct(norm="ortho")
            self.register_buffer("dct", AF.create_dct(n_mfcc, self.n_mels, norm="ortho"), persistent=False)

    @property
    def n_features(self) -> int:
        return self.n_mels if self.kind == "logmel" else 3 * self.n_mfcc

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames of clips of `lengths` samples (python_speech_features' framing)."""
        extra = (lengths - self.win).clamp_min(0)
        return 1 + torch.div(extra + self.hop - 1, self.hop, rounding_mode="floor")

    def mel_dense(self, frames: Tensor) -> Tensor:
        """Mel power [B, N, n_mels] of frames [B, N, win]: one FFT of every frame and one dense product (the
        reference; used on CUDA, where one large launch beats many small ones)."""
        power = torch.view_as_real(torch.fft.rfft(frames * self.window, n=self.n_fft)).square().flatten(-2)
        return power @ self.fbank  # [B, N, 2·bins] @ [2·bins, n_mels]

    def mel_banded(self, frames: Tensor) -> Tensor:
        """mel_dense's numbers, faster on the CPU: chunks of frames windowed into one reused zero-padded buffer
        (the FFT input stays in cache and n_fft padding is written once), then one small product per band."""
        B, N, _ = frames.shape
        mel = frames.new_empty(B, N, self.n_mels)
        buf = frames.new_zeros(min(N, self.chunk_frames), self.n_fft)
        first, last = self.bands[0][0], self.bands[-1][1]
        bands = [(lo, hi, c0, c1, getattr(self, f"band{i}")) for i, (lo, hi, c0, c1) in enumerate(self.bands)]
        for b in range(B):
            for start in range(0, N, len(buf)):
                n = min(len(buf), N - start)
                torch.mul(frames[b, start : start + n], self.window, out=buf[:n, : self.win])
                spec = torch.view_as_real(torch.fft.rfft(buf[:n])).flatten(-2)  # [n, 2·bins] re, im
                spec[:, 2 * first : 2 * last].square_()
                for lo, hi, c0, c1, weights in bands:
                    torch.mm(spec[:, 2 * lo : 2 * hi], weights, out=mel[b, start : start + n, c0:c1])
        return mel

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if wavs.dim() != 2 or wavs.shape[1] == 0:
            raise ValueError(f"wavs must be [B, T] with T > 0, got shape {tuple(wavs.shape)}")
        device = self.fbank.device
        B, T = wavs.shape
        lengths = torch.full((B,), T, device=device) if lengths is None else torch.as_tensor(lengths).to(device)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be [B={B}] in 1..T={T}, got {lengths.tolist()}")
        lengths = lengths.long()
        frame_lengths = self.num_frames(lengths)
        N = int(frame_lengths.max())
        x = wavs.to(device, torch.float32)
        # Pre-emphasised, zero past each clip's end and padded to whole frames: one buffer, one pass.
        y = x.new_zeros(B, max(T, (N - 1) * self.hop + self.win))
        y[:, 0] = x[:, 0]
        torch.add(x[:, 1:], x[:, :-1], alpha=-self.preemphasis, out=y[:, 1:T])
        for b, end in enumerate(lengths.tolist()):
            y[b, end:] = 0
        frames = y.unfold(1, self.win, self.hop)[:, :N]  # [B, N, win], a view
        mel = self.mel_banded(frames) if device.type == "cpu" else self.mel_dense(frames)
        feats = mel.clamp_min(self.log_floor).log().transpose(1, 2)  # [B, n_mels, N]
        if self.kind == "mfcc":
            ceps = _hold_last(torch.einsum("bmn,mc->bcn", feats, self.dct), frame_lengths)
            win = 2 * self.delta_width + 1
            d1 = _hold_last(AF.compute_deltas(ceps, win_length=win, mode="replicate"), frame_lengths)
            d2 = AF.compute_deltas(d1, win_length=win, mode="replicate")
            feats = torch.cat([ceps, d1, d2], dim=1)
        valid = (torch.arange(N, device=device) < frame_lengths[:, None])[:, None]  # [B, 1, N]
        if self.normalize:
            count = frame_lengths[:, None, None].float()
            mean = (feats * valid).sum(-1, keepdim=True) / count
            std = (((feats - mean) * valid).square().sum(-1, keepdim=True) / count).sqrt()
            feats = (feats - mean) / (std + self.eps)
        return feats * valid, frame_lengths


# ---------------------------------------------------------------------------------------------------------
# File -> features


class AudioFrontEnd(nn.Module):
    """front(path) -> Tensor[n_features, frames]: load -> (VAD) -> features, on the module's device.

    Skip rule: a clip with less than `min_speech_s` seconds left (after the VAD when it is on) raises
    AudioError; callers count and skip AudioErrors.
    """

    def __init__(
        self,
        features: AudioFeatures,
        vad: bool = True,
        vad_mode: int = 2,
        vad_frame_ms: int = 20,
        vad_padding_ms: int = 50,
        min_speech_s: float = 1.0,  # shorter speech cannot fill a 300-frame crop without 3x tiling
    ):
        super().__init__()
        self.features = features
        self.vad, self.vad_mode, self.vad_frame_ms, self.vad_padding_ms = (
            vad,
            vad_mode,
            vad_frame_ms,
            vad_padding_ms,
        )
        self.min_speech_s = min_speech_s

    @property
    def n_features(self) -> int:
        return self.features.n_features

    def speech(self, path) -> Tensor:
        """The speech samples of a file, float32 mono [T'] at the features' rate, on the CPU."""
        rate = self.features.sample_rate
        wav = load_audio(path, rate)
        if self.vad:
            wav = vad_trim(wav, rate, self.vad_mode, self.vad_frame_ms, self.vad_padding_ms, path=path)
        seconds = len(wav) / rate
        if seconds < self.min_speech_s:
            what = "of speech after the VAD" if self.vad else "of audio"
            raise AudioError(path, f"only {seconds:.2f} s {what}; at least {self.min_speech_s} s needed")
        return wav

    def forward(self, path) -> Tensor:
        feats, _ = self.features(self.speech(path)[None])
        return feats[0]


# ---------------------------------------------------------------------------------------------------------
# Crops


def tile_to_min(feats: Tensor, min_frames: int = 1000) -> Tensor:
    """Repeat [..., T] along time and cut to min_frames when T < min_frames (Wen's test-time rule)."""
    T = feats.shape[-1]
    if T == 0:
        raise ValueError("cannot tile an utterance with no frames")
    if T >= min_frames:
        return feats
    return feats.repeat(*([1] * (feats.dim() - 1)), math.ceil(min_frames / T))[..., :min_frames]


def random_crop_batch(
    feats: Sequence[Tensor],  # per clip [F, T_i]
    min_frames: int = 300,
    max_frames: int = 800,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One crop length L ~ U{min_frames..max_frames} for the batch, a random window of L frames per clip
    (clips shorter than L are tiled first). Returns (audio [B, F, L], lengths [B] all L)."""
    if not feats or not 1 <= min_frames <= max_frames:
        raise ValueError(f"need clips and 1 <= min_frames <= max_frames, got {len(feats)}, {min_frames}, {max_frames}")
    L = int(torch.randint(min_frames, max_frames + 1, (), generator=generator))
    crops = []
    for f in feats:
        f = tile_to_min(f, L)
        start = int(torch.randint(0, f.shape[-1] - L + 1, (), generator=generator))
        crops.append(f[..., start : start + L])
    return torch.stack(crops), torch.full((len(crops),), L, dtype=torch.long)
