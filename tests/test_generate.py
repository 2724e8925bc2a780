"""experiments.generate: faces from an embedded-corpus voice, clear errors on bad audio."""

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

audio = pytest.importorskip("datamodules.audio", reason="datamodules/audio.py (AudioFrontEnd) not there yet")
voices = pytest.importorskip("datamodules.synthetic.voices")

from test_evaluate import SMOKE, smoke_checkpoint  # noqa: E402

from datamodules.audio import AudioError  # noqa: E402
from experiments.generate import generate_faces, list_audio, run  # noqa: E402
from lightning_modules.voice2face import Voice2FaceGAN  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """A spoken sentence (eSpeak, as the embedded corpus), a file that is not audio, and pure silence."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    traits = {"language": "en-us", "voice_variant": "m3", "pitch": 50, "pitch_range": 50, "rate_wpm": 160}
    sf.write(folder / "a_voice.wav", voices.make_utterance(traits, rng), voices.SAMPLE_RATE)
    (folder / "b_not_audio.wav").write_text("this is text, not a RIFF file")
    sf.write(folder / "c_silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    return folder


def front_end():
    return audio.AudioFrontEnd(audio.AudioFeatures("logmel"), vad=True)


def test_generate_faces_from_a_voice_and_reports_bad_files(audio_dir, tmp_path):
    from lightning_modules.voice2face import Voice2FaceGAN

    model = Voice2FaceGAN(**SMOKE).eval()
    written, errors = generate_faces(model, front_end(), list_audio(audio_dir), tmp_path)
    assert [p.name for p in written] == ["a_voice.wav.png"]
    assert np.asarray(Image.open(written[0])).shape == (16, 16, 3)
    assert (tmp_path / "grid.png").is_file()
    assert set(errors) == {str(audio_dir / "b_not_audio.wav"), str(audio_dir / "c_silence.wav")}
    assert all(reason for reason in errors.values())


def test_generate_command_exit_status(audio_dir, tmp_path, monkeypatch, capsys):
    import hydra

    import experiments.generate as command

    ckpt = smoke_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.setattr(command, "front_end_of", lambda ckpt, overrides=None: front_end())
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        good = hydra.compose(
            "generate",
            [f"ckpt={ckpt}", f"audio={audio_dir / 'a_voice.wav'}", f"out={tmp_path / 'out'}", "device=cpu"],
        )
        bad = hydra.compose(
            "generate",
            [
                f"ckpt={ckpt}",
                f"audio={audio_dir / 'b_not_audio.wav'}",
                f"out={tmp_path / 'bad'}",
                "device=cpu",
            ],
        )
    assert run(good) == 0 and (tmp_path / "out" / "a_voice.wav.png").is_file()
    assert run(bad) == 1
    assert "b_not_audio.wav" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        list_audio(tmp_path / "missing.wav")


def test_generate_loses_nothing(audio_dir, tmp_path):
    """Inputs that share a stem (or are called grid) each keep their face; the manifest comes last; an out folder
    that holds an earlier run is refused unless overwrite=true."""
    import shutil

    from experiments.generate import check_out
    from lightning_modules.voice2face import Voice2FaceGAN

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.wav", "a.flac", "grid.wav"):
        data, rate = sf.read(audio_dir / "a_voice.wav")
        sf.write(inputs / name, data, rate)
    shutil.copy(audio_dir / "a_voice.wav", inputs / "a.ogg.wav")
    out = tmp_path / "out"
    written, errors = generate_faces(Voice2FaceGAN(**SMOKE).eval(), front_end(), list_audio(inputs), out)
    assert not errors and sorted(p.name for p in written) == [
        "a.flac.png",
        "a.ogg.wav.png",
        "a.wav.png",
        "grid.wav.png",
    ]
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert len(manifest["faces"]) == 4 and manifest["grid"] == "grid.png"
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in written), "grid.png", "manifest.json"])
    with pytest.raises(FileExistsError, match="already holds files"):
        check_out(out, overwrite=False)
    check_out(out, overwrite=True)
    check_out(tmp_path / "new", overwrite=False)


def test_front_end_of_a_checkpoint_is_the_training_audio_path(audio_dir, tmp_path):
    from experiments.generate import front_end_of

    hparams = {
        "corpus": {"identities": 48, "seed": 0},
        "features": {"kind": "logmel", "preemphasis": 0.95},
        "vad": {"vad_mode": 3},
        "eval_min_frames": 1000,
    }
    front = front_end_of(smoke_checkpoint(tmp_path / "last.ckpt", datamodule_hparams=hparams))
    assert front.front.vad_mode == 3 and front.front.features.kind == "logmel"
    # a checkpoint written while log-mel's pre-emphasis defaulted to Wen et al.'s 0.97 stored none: it meant 0.97
    legacy = {**hparams, "features": {"kind": "logmel"}}
    legacy_front = front_end_of(smoke_checkpoint(tmp_path / "legacy.ckpt", datamodule_hparams=legacy))
    assert legacy_front.front.features.preemphasis == 0.97
    assert front.front.features.preemphasis == 0.95
    wav = audio_dir / "a_voice.wav"
    plain = audio.AudioFrontEnd(audio.AudioFeatures("logmel"), vad_mode=3)(wav)
    feats = front(wav)
    assert plain.shape[1] < 1000 and feats.shape == (plain.shape[0], 1000)  # tiled like held-out clips
    assert torch.equal(feats[:, : plain.shape[1]], plain.half().float())  # as stored in the shards
    with pytest.raises(ValueError, match="no datamodule hyper-parameters"):
        front_end_of(smoke_checkpoint(tmp_path / "bare.ckpt"))


def test_a_long_clip_is_embedded_in_windows_with_bounded_memory():
    from experiments.generate import embed_in_windows
    from lightning_modules.voice2face import Voice2FaceGAN

    torch.manual_seed(0)
    model = Voice2FaceGAN(**SMOKE).eval()
    feats = torch.randn(64, 2000)
    whole = model.embed(feats[None], torch.tensor([2000]))
    assert torch.allclose(embed_in_windows(model, feats, 4000), whole, atol=1e-5)  # within one window: whole
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-1]))
    windowed = embed_in_windows(model, feats, 600)
    assert calls == [600, 600, 800]  # one window at a time; the 200-frame tail joins the last
    assert torch.nn.functional.cosine_similarity(windowed, whole).item() > 0.98


@pytest.mark.parametrize(
    "override, words",
    [
        ("window_seconds=-1", "window_seconds: -1 is less than the minimum of 1"),  # ZeroDivisionError
        ("window_seconds=0", "window_seconds: 0 is less than the minimum of 1"),  # range() arg 3 must not be zero
        ("device=bogus", "device: 'bogus' does not match"),  # torch's RuntimeError
        ("truncation_psi=abc", "truncation_psi: 'abc' is not of type 'number'"),  # lerp() TypeError
        ("grid_columns=0", "grid_columns: 0 is less than the minimum of 1"),
    ],
)
def test_generate_values_outside_their_domain_are_named_before_any_work(audio_dir, tmp_path, override, words):
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose(
            "generate", [f"ckpt={tmp_path / 'x.ckpt'}", f"audio={audio_dir}", f"out={tmp_path / 'out'}", override]
        )
    with pytest.raises(ValueError, match=rf"config: {words}.*commands_schema.yaml"):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_generate_without_a_checkpoint_says_what_to_pass(audio_dir):
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose("generate", [f"audio={audio_dir}"])
    with pytest.raises(ValueError, match=r"config: ckpt must be given: python -m experiments.generate ckpt=\.\.\."):
        run(cfg)  # was omegaconf's MissingMandatoryValue traceback


@pytest.mark.parametrize("kind", ["fifo", "symlink_loop", "broken_symlink"])
def test_an_audio_path_that_is_no_file_says_what_it_is(tmp_path, kind):
    import os

    path = tmp_path / "voice.wav"
    {
        "fifo": lambda: os.mkfifo(path),
        "symlink_loop": lambda: os.symlink(path, path),
        "broken_symlink": lambda: os.symlink(tmp_path / "gone.wav", path),
    }[kind]()
    words = {"fifo": "a FIFO", "symlink_loop": "a symlink loop", "broken_symlink": "a broken symlink"}[kind]
    with pytest.raises(ValueError, match=rf"{path}: {words}.*audio= must name"):
        list_audio(path)  # was "no such audio file or folder"


# Training and data-preparation code: a voice to a face runs none of it (however the files are split).
TRAINING_ONLY = (
    "experiments/run.py",
    "experiments/preflight.py",
    "lightning_modules/callbacks/",
    "lightning_modules/io/legacy.py",
    "lightning_modules/io/nvlabs_pickle.py",
    "lightning_modules/io/exporters.py",
    "lightning_modules/metrics/",
    "datamodules/voxvgg.py",
    "datamodules/sources.py",
    "datamodules/shards.py",
    "datamodules/items.py",
    "datamodules/prepare.py",
    "datamodules/streaming.py",
    "datamodules/synthetic/",
)


def test_a_voice_to_a_face_runs_no_training_code_and_reads_the_checkpoint_once(audio_dir, tmp_path, monkeypatch):
    """wav -> face through `python -m experiments.generate`: no training or data-preparation code runs, the voice
    goes through the one pipeline the training data went through, and the checkpoint file is opened once, for the
    model and the voice pipeline both."""
    import sys

    import experiments.generate as command

    root = Path(__file__).resolve().parents[1]
    hparams = {"features": {"kind": "logmel", "preemphasis": 0.95}, "vad": {}, "eval_min_frames": 1000}
    ckpt = smoke_checkpoint(tmp_path / "last.ckpt", datamodule_hparams=hparams)
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(Path(f)) or load(f, *a, **k))
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose(
            "generate", [f"ckpt={ckpt}", f"audio={audio_dir / 'a_voice.wav'}", f"out={tmp_path / 'out'}", "device=cpu"]
        )
    visited = set()

    def profile(frame, event, arg):
        if event == "call":
            visited.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        status = command.run(cfg)
    finally:
        sys.setprofile(None)
    assert status == 0 and (tmp_path / "out" / "a_voice.wav.png").is_file()
    ours = [f for f in visited if f.startswith(str(root)) and not {"tests", ".venv"} & set(Path(f).parts)]
    project = {str(Path(f).relative_to(root)) for f in ours}
    assert not [f for f in project if f.startswith(TRAINING_ONLY)], sorted(project)
    assert {"experiments/generate.py", "datamodules/pipeline.py", "datamodules/audio.py"} <= project, sorted(project)
    assert reads == [ckpt]


def test_generate_refuses_data_overrides_that_would_do_nothing(tmp_path):
    """Only the voice pipeline's arguments change what generate does; a data root or batch size was ignored."""
    from experiments.generate import front_end_of

    ckpt = smoke_checkpoint(tmp_path / "last.ckpt", datamodule_hparams={"features": {"kind": "logmel"}})
    with pytest.raises(ValueError, match=r"data_overrides: \['root'\] do not change what generate does"):
        front_end_of(ckpt, {"root": "/moved/data"})
    assert front_end_of(ckpt, {"eval_min_frames": 300}).eval_min_frames == 300


ALSA = Path("/usr/share/sounds/alsa")  # Debian's alsa-utils: one speaker's real recordings, 48 kHz, about 1.4 s


def pink_noise(seconds=3.0, rate=16000):
    spectrum = np.fft.rfft(np.random.default_rng(0).standard_normal(int(seconds * rate)))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))  # 1/f power
    wav = np.fft.irfft(spectrum, int(seconds * rate))
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def speech_check():
    from datamodules.speech_check import SpeechCheck

    return SpeechCheck()


def test_noise_is_no_speech_and_a_voice_is(audio_dir, tmp_path, speech_check):
    """webrtcvad (the front end's VAD) keeps all of 3 s of pink noise; silero-vad finds no speech in it."""
    sf.write(tmp_path / "pink.wav", pink_noise(), 16000)
    model = Voice2FaceGAN(**SMOKE).eval()
    files = [audio_dir / "a_voice.wav", tmp_path / "pink.wav"]
    assert len(front_end()(str(tmp_path / "pink.wav"))) > 0  # without the check, noise would get a face
    written, errors = generate_faces(model, front_end(), files, tmp_path / "out", speech_check=speech_check)
    assert [p.name for p in written] == ["a_voice.wav.png"]
    assert errors == {str(tmp_path / "pink.wav"): "no speech found (silero-vad: no 250 ms of speech at threshold 0.5)"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert 2.0 < manifest["speech_seconds"][str(audio_dir / "a_voice.wav")] < 5.0


@pytest.mark.skipif(not (ALSA / "Noise.wav").is_file(), reason=f"{ALSA} is absent (Debian's alsa-utils)")
def test_real_short_recordings_at_48_and_44k(tmp_path, speech_check):
    """Eight 1.3-1.5 s recordings of a human speaker at 48 kHz (and one resampled to 44.1 kHz) each get a face,
    tiled as the held-out clips are; alsa-utils' Noise.wav is reported as no speech."""
    from scipy.signal import resample_poly

    from datamodules.pipeline import VoicePipeline

    wav, rate = sf.read(ALSA / "Front_Center.wav", dtype="float32")
    assert rate == 48000
    sf.write(tmp_path / "front_center_44k.wav", resample_poly(wav, 147, 160).astype(np.float32), 44100)
    files = sorted(ALSA.glob("*.wav")) + [tmp_path / "front_center_44k.wav"]
    pipeline = VoicePipeline({"kind": "logmel", "preemphasis": 0.95}, {}, eval_min_frames=1000)
    model = Voice2FaceGAN(**SMOKE).eval()
    written, errors = generate_faces(model, pipeline, files, tmp_path / "out", speech_check=speech_check)
    assert list(errors) == [str(ALSA / "Noise.wav")] and errors[str(ALSA / "Noise.wav")].startswith("no speech found")
    assert len(written) == 9
    speech = json.loads((tmp_path / "out" / "manifest.json").read_text())["speech_seconds"]
    assert all(0.8 < t < 1.6 for t in speech.values()), speech
    assert pipeline(str(ALSA / "Front_Center.wav")).shape[-1] == 1000  # ~1.3 s of speech tiled to 10 s
    sf.write(tmp_path / "half.wav", wav[:24000], 48000)
    with pytest.raises(AudioError, match=r"half.wav: only 0\.\d\d s of speech after the VAD; at least 1.0 s needed"):
        pipeline.front.speech(str(tmp_path / "half.wav"))


def test_a_folder_lists_audio_libsndfile_cannot_read_so_it_is_reported(audio_dir, tmp_path):
    """An .m4a among WAVs was left out without a word (while audio=x.m4a alone was reported)."""
    import shutil

    shutil.copy(audio_dir / "a_voice.wav", tmp_path / "a.wav")
    (tmp_path / "b.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    (tmp_path / "notes.txt").write_text("not audio")
    assert [p.name for p in list_audio(tmp_path)] == ["a.wav", "b.m4a"]
    model = Voice2FaceGAN(**SMOKE).eval()
    written, errors = generate_faces(model, front_end(), list_audio(tmp_path), tmp_path / "out")
    assert [p.name for p in written] == ["a.wav.png"] and "not a readable audio file" in errors[str(tmp_path / "b.m4a")]


def test_a_second_generate_into_a_folder_in_use_is_refused(audio_dir, tmp_path):
    """Two runs into one out= folder both exited 0, run A's face then holding run B's; now the second is refused
    while the first holds the folder, and writes nothing."""
    from datamodules.files import folder_lock

    ckpt = smoke_checkpoint(tmp_path / "last.ckpt")
    out = tmp_path / "out"
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose("generate", [f"ckpt={ckpt}", f"audio={audio_dir / 'a_voice.wav'}", f"out={out}"])
    with folder_lock(out, "out folder", "wait"):  # another generate at work in the folder
        with pytest.raises(BlockingIOError, match=f"out folder {out} is in use by pid [0-9]+ on .*; wait for that"):
            run(cfg)
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_a_face_name_past_the_file_system_limit_is_one_error_not_the_batch(audio_dir, tmp_path):
    """A 252-character input name gives a 256-character face name: it failed the hidden temporary name and
    aborted the whole batch with no manifest; now that file is reported and the others written."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    data, rate = sf.read(audio_dir / "a_voice.wav")
    long = "v" * 248 + ".wav"
    for name in ("short.wav", long):
        sf.write(inputs / name, data, rate)
    out = tmp_path / "out"
    written, errors = generate_faces(Voice2FaceGAN(**SMOKE).eval(), front_end(), list_audio(inputs), out)
    assert [p.name for p in written] == ["short.wav.png"]
    assert list(errors) == [str(inputs / long)] and "could not be written" in errors[str(inputs / long)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["errors"]) == [str(inputs / long)] and len(manifest["faces"]) == 1
