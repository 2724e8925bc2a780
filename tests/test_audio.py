"""datamodules.audio: agreement with python_speech_features, padding, VAD, bad input, crops.

Agreement metric: for every frame with energy (frame power within 60 dB of the loudest frame), the relative
error ‖ours_t − ref_t‖₂ / ‖ref_t‖₂ over that frame's feature vector; its maximum must be <= 1e-3. Deltas are
compared block by block (cepstra, Δ, ΔΔ) with the same metric. The reference runs in float64 on the same
samples in int16 units (32768·x), as python_speech_features is normally fed.
"""

import numpy as np
import pytest
import python_speech_features as psf
import soundfile as sf
import torch
from scipy.signal import chirp, lfilter

from datamodules.audio import (
    AudioError,
    AudioFeatures,
    AudioFrontEnd,
    load_audio,
    random_crop_batch,
    tile_to_min,
    vad_trim,
)

SR = 16000


def sine_sweep(seconds=1.5, f0=100.0, f1=7000.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * chirp(t, f0, t[-1], f1, method="logarithmic")).astype(np.float32)


def speech_like(seconds=3.0, seed=0, lead_s=0.0):
    """Glottal pulses (pitch contour 95-165 Hz) through three formant resonators that change every syllable,
    syllable envelopes, 0.3 s pauses, a noise floor 60 dB down, and optional leading/trailing silence."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 130 + 35 * np.sin(2 * np.pi * 0.6 * t + rng.uniform(0, 6))
    pulses = np.diff(np.floor(np.cumsum(f0 / SR)), prepend=0.0)
    source = lfilter([1.0], [1.0, -0.97], pulses)  # a falling-spectrum glottal flow derivative stand-in
    out = np.zeros(n)
    syllable = int(0.22 * SR)
    for start in range(0, n, syllable):
        seg = source[start : start + syllable]
        if (start // syllable) % 5 == 4:  # every fifth slot is a pause
            continue
        for formant, bandwidth in zip(rng.uniform([300, 900, 2200], [850, 2300, 3200]), (80, 110, 160)):
            r = np.exp(-np.pi * bandwidth / SR)
            seg = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * formant / SR), r * r], seg)
        out[start : start + len(seg)] = seg * np.hanning(len(seg))
    out = 0.3 * out / np.abs(out).max() + 3e-4 * rng.standard_normal(n)
    pad = np.zeros(int(lead_s * SR))
    return np.concatenate([pad, out, pad]).astype(np.float32)


def features(kind, x, **kw):
    feats, lengths = AudioFeatures(kind, **kw)(torch.from_numpy(x)[None])
    return feats[0, :, : int(lengths[0])].T.double().numpy()  # [frames, F]


def psf_logmel(x, winfunc=np.hamming, preemph=0.95):
    return np.log(psf.fbank(32768 * x.astype(np.float64), SR, 0.025, 0.01, 64, 1024, 20, 7200, preemph, winfunc)[0])


def psf_mfcc(x):
    ceps = psf.mfcc(
        32768 * x.astype(np.float64),
        SR,
        0.02,
        0.01,
        13,
        40,
        512,
        20,
        7200,
        0.95,
        ceplifter=0,
        appendEnergy=False,
        winfunc=np.hamming,
    )
    d1 = psf.delta(ceps, 2)
    return ceps, d1, psf.delta(d1, 2)


def energetic(x, winlen):
    energy = psf.fbank(32768 * x.astype(np.float64), SR, winlen, 0.01, 40, 1024, 20, 7200, 0.0)[1]
    return energy > energy.max() * 1e-6


def max_rel_err(ours, ref, mask):
    assert ours.shape == ref.shape
    return float((np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1))[mask].max())


SIGNALS = {"sweep": sine_sweep(), "speech_like": speech_like()}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_logmel_matches_psf(name):
    x = SIGNALS[name]
    mask = energetic(x, 0.025)
    assert mask.mean() > 0.5
    assert max_rel_err(features("logmel", x, normalize=False), psf_logmel(x), mask) <= 1e-3
    wen = features("logmel", x, normalize=False, preemphasis=0.97)  # data/features=logmel_wen
    assert max_rel_err(wen, psf_logmel(x, preemph=0.97), mask) <= 1e-3
    # psf.logfbank itself has no window argument: compare with a rectangular window.
    ref = psf.logfbank(32768 * x.astype(np.float64), SR, 0.025, 0.01, 64, 1024, 20, 7200, 0.95)
    assert max_rel_err(features("logmel", x, normalize=False, window="rectangular"), ref, mask) <= 1e-3


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_mfcc_deltas_match_psf(name):
    x = SIGNALS[name]
    mask = energetic(x, 0.02)
    ours = features("mfcc", x, normalize=False)
    assert ours.shape[1] == 39
    for block, ref in enumerate(psf_mfcc(x)):
        assert max_rel_err(ours[:, 13 * block : 13 * (block + 1)], ref, mask) <= 1e-3, f"block {block}"


def test_normalisation_per_utterance_and_band():
    x = SIGNALS["speech_like"]
    ref = psf_logmel(x)
    ref = (ref - ref.mean(0)) / (ref.std(0) + 1e-5)
    ours = features("logmel", x)
    assert max_rel_err(ours, ref, np.ones(len(ref), bool)) <= 1e-3
    np.testing.assert_allclose(ours.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(ours.std(0), 1, atol=1e-3)


def test_embedded_corpus_voices_match_psf():
    voices = pytest.importorskip("datamodules.synthetic.voices", reason="embedded corpus generator absent")
    rng = np.random.default_rng(1)
    for variant, pitch in (("m3", 35), ("f2", 70)):
        traits = {
            "language": "en-us",
            "voice_variant": variant,
            "pitch": pitch,
            "pitch_range": 50,
            "rate_wpm": 170,
        }
        x = np.asarray(voices.make_utterance(traits, rng), dtype=np.float32)
        x = vad_trim(torch.from_numpy(x)).numpy()
        assert max_rel_err(features("logmel", x, normalize=False), psf_logmel(x), energetic(x, 0.025)) <= 1e-3
        ours, mask = features("mfcc", x, normalize=False), energetic(x, 0.02)
        for block, ref in enumerate(psf_mfcc(x)):
            assert max_rel_err(ours[:, 13 * block : 13 * (block + 1)], ref, mask) <= 1e-3


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_padded_batch_equals_each_clip_alone(kind):
    clips = [speech_like(1.0, seed=1), speech_like(2.3, seed=2), sine_sweep(0.41)]
    module = AudioFeatures(kind)
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.randn(len(clips), int(lengths.max()))  # garbage in the padding must not leak
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    feats, frame_lengths = module(batch, lengths)
    assert feats.shape == (3, module.n_features, int(frame_lengths.max()))
    for i, c in enumerate(clips):
        alone, n = module(torch.from_numpy(c)[None])
        assert int(n) == int(frame_lengths[i]) == int(module.num_frames(lengths[i : i + 1]))
        torch.testing.assert_close(feats[i, :, : int(n)], alone[0], atol=2e-4, rtol=1e-4)
        assert not feats[i, :, int(n) :].any()


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
@pytest.mark.parametrize("chunk_frames,band_groups", [(7, 4), (256, 1), (1000, 9)])
def test_banded_cpu_path_equals_dense_reference(kind, chunk_frames, band_groups):
    module = AudioFeatures(kind, chunk_frames=chunk_frames, band_groups=band_groups)
    clips = torch.from_numpy(np.stack([speech_like(1.3, seed=s) for s in range(2)]))
    frames = clips.unfold(1, module.win, module.hop)
    dense, banded = module.mel_dense(frames), module.mel_banded(frames)
    assert banded.shape == dense.shape == (2, frames.shape[1], module.n_mels)
    torch.testing.assert_close(banded, dense, rtol=1e-4, atol=1e-6 * float(dense.abs().max()))
    # The whole forward takes the banded path on the CPU; with the dense one in its place it agrees.
    feats, _ = module(clips)
    module.mel_banded = module.mel_dense
    torch.testing.assert_close(module(clips)[0], feats, atol=2e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_cuda_matches_cpu(kind):
    clips = torch.from_numpy(np.stack([speech_like(2.0, seed=s) for s in range(3)]))
    lengths = torch.tensor([32000, 20000, 9000])
    cpu = AudioFeatures(kind)
    gpu = AudioFeatures(kind).cuda()
    a, na = cpu(clips, lengths)
    b, nb = gpu(clips.cuda(), lengths.cuda())
    assert torch.equal(na, nb.cpu())
    torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=1e-3)


def test_feature_arguments_are_checked():
    with pytest.raises(ValueError, match="kind"):
        AudioFeatures("spectrogram")
    with pytest.raises(ValueError, match="without FFT bins"):
        AudioFeatures("logmel", n_mels=200, n_fft=512)
    with pytest.raises(ValueError, match="lengths"):
        AudioFeatures()(torch.zeros(2, 800), torch.tensor([800, 900]))
    assert AudioFeatures("mfcc").n_features == 39 and AudioFeatures().n_features == 64


# --- loading and bad input ------------------------------------------------------------------------------


def write(path, x, rate=SR, subtype="PCM_16"):
    sf.write(path, x, rate, subtype=subtype)
    return path


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(AudioError, match="no such file") as err:
        load_audio(tmp_path / "absent.wav")
    assert err.value.path == str(tmp_path / "absent.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file") as err:
        load_audio(tmp_path / "empty.wav")
    assert str(err.value).startswith(str(tmp_path / "empty.wav") + ": ")


def test_bytes_that_are_not_audio(tmp_path):
    (tmp_path / "text.wav").write_text("these are words, not a RIFF header")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "text.wav")


def test_truncated_wav(tmp_path):
    data = write(tmp_path / "full.wav", SIGNALS["speech_like"]).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated WAV") as err:
        load_audio(tmp_path / "cut.wav")
    assert err.value.path == str(tmp_path / "cut.wav")
    (tmp_path / "header.wav").write_bytes(data[:30])  # cut inside the header
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "header.wav")


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF])
def test_a_streamed_wav_with_its_length_left_unwritten_is_read(tmp_path, declared):
    """A recorder writing a stream leaves the data chunk's length at 0 (or 0xFFFFFFFF): 2 s of audio then read
    as "no samples in the file"."""
    import struct

    full = write(tmp_path / "full.wav", SIGNALS["speech_like"])
    raw = bytearray(full.read_bytes())
    at = raw.find(b"data")
    struct.pack_into("<I", raw, at + 4, declared)
    struct.pack_into("<I", raw, 4, declared)
    (tmp_path / "streamed.wav").write_bytes(bytes(raw))
    torch.testing.assert_close(load_audio(tmp_path / "streamed.wav"), load_audio(full))


def test_8khz_is_resampled_to_16khz(tmp_path):
    t = np.arange(8000) / 8000
    wav = load_audio(write(tmp_path / "tel.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), rate=8000))
    assert wav.dtype == torch.float32 and wav.shape == (16000,)
    spectrum = torch.fft.rfft(wav[2000:-2000]).abs()
    assert abs(int(spectrum.argmax()) * SR / 12000 - 1000) < 5
    with pytest.raises(AudioError, match="below 8000 Hz"):
        load_audio(write(tmp_path / "low.wav", np.zeros(400), rate=4000))


def test_stereo_is_mixed_down(tmp_path):
    x = SIGNALS["speech_like"]
    wav = load_audio(write(tmp_path / "st.wav", np.stack([x, 0.5 * x], 1), subtype="FLOAT"))
    torch.testing.assert_close(wav, torch.from_numpy(0.75 * x))


def test_24_bit(tmp_path):
    x = SIGNALS["sweep"]
    wav = load_audio(write(tmp_path / "p24.wav", x, subtype="PCM_24"))
    assert wav.dtype == torch.float32
    assert (wav - torch.from_numpy(x)).abs().max() <= 2**-23


def test_all_silence_raises(tmp_path):
    path = write(tmp_path / "silence.wav", np.zeros(2 * SR))
    with pytest.raises(AudioError, match="no speech") as err:
        AudioFrontEnd(AudioFeatures())(path)
    assert err.value.path == str(path)


def test_too_short_raises(tmp_path):
    path = write(tmp_path / "short.wav", speech_like(0.6))
    with pytest.raises(AudioError, match="at least 1.0 s needed"):
        AudioFrontEnd(AudioFeatures())(path)
    with pytest.raises(AudioError, match="of audio"):
        AudioFrontEnd(AudioFeatures(), vad=False)(path)


# --- VAD and the front end ------------------------------------------------------------------------------


def test_vad_trims_silence_and_keeps_speech():
    x = torch.from_numpy(speech_like(3.0, seed=3, lead_s=1.0))
    speech = vad_trim(x)
    assert len(speech) % 320 == 0
    assert 1.5 * SR < len(speech) < 3.2 * SR  # 1 s of silence each side gone, most of the 3 s kept
    loud = speech.abs().unfold(0, 320, 320).max(1).values
    assert (loud > 0.01).float().mean() > 0.6
    with pytest.raises(ValueError, match="webrtcvad"):
        vad_trim(x, frame_ms=25)


def test_front_end_gives_normalised_features(tmp_path):
    path = write(tmp_path / "voice.wav", speech_like(3.0, seed=4, lead_s=0.5))
    front = AudioFrontEnd(AudioFeatures("mfcc"))
    feats = front(path)
    assert feats.shape[0] == front.n_features == 39 and 150 < feats.shape[1] < 330
    torch.testing.assert_close(feats.mean(1), torch.zeros(39), atol=1e-4, rtol=0)


# --- crops ----------------------------------------------------------------------------------------------


def test_random_crop_batch_one_length_per_batch():
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(64, n) for n in (1200, 850, 120)]
    seen = set()
    for _ in range(20):
        audio, lengths = random_crop_batch(clips, 300, 800, generator=g)
        L = audio.shape[-1]
        assert 300 <= L <= 800 and audio.shape[:2] == (3, 64) and lengths.tolist() == [L] * 3
        seen.add(L)
        for clip, crop in zip(clips, audio):  # a contiguous window of the clip (the short one tiled first)
            clip = tile_to_min(clip, L)
            start = int((clip[0].unfold(0, L, 1) == crop[0]).all(1).nonzero()[0])
            assert torch.equal(clip[:, start : start + L], crop)
    assert len(seen) > 10


def test_tile_to_min():
    feats = torch.arange(12.0).reshape(2, 6)
    tiled = tile_to_min(feats, 14)
    assert tiled.shape == (2, 14)
    assert (
        torch.equal(tiled[:, :6], feats)
        and torch.equal(tiled[:, 6:12], feats)
        and torch.equal(tiled[:, 12:], feats[:, :2])
    )
    long = torch.randn(64, 1500)
    assert tile_to_min(long) is long
