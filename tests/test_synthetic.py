"""The embedded corpus: layout, determinism, and that the traits are really in the audio and the pixels."""

from __future__ import annotations

import csv
import hashlib
import wave
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image
from scipy.signal import find_peaks

from datamodules.meta import read_meta
from datamodules.synthetic import (
    ATTRIBUTE_KINDS,
    contact_sheet,
    ensure_corpus,
    generate_corpus,
    read_attributes,
)
from datamodules.synthetic import corpus as corpus_module
from datamodules.synthetic.corpus import LANDMARK_COLUMNS, META_HEADER
from datamodules.synthetic.traits import SPLIT_LETTERS, sample_identities

REAL_META = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vox1_meta.csv"
IDENTITIES = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("synthetic") / "corpus", identities=IDENTITIES, seed=0)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth()) == (1, 2), path
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768, f.getframerate()


def _voices(corpus: Path) -> dict[str, list[Path]]:
    return {
        row["VGGFace1 ID"]: sorted((corpus / "voxceleb1" / "wav" / row["VoxCeleb1 ID"]).rglob("*.wav"))
        for row in read_meta(corpus / "vox1_meta.csv")
    }


def _landmarks(corpus: Path) -> dict[str, np.ndarray]:
    with open(corpus / "landmarks.csv", newline="") as f:
        return {
            row["path"]: np.array([float(row[c]) for c in LANDMARK_COLUMNS[1:]]).reshape(5, 2)
            for row in csv.DictReader(f)
        }


def _pixel(image: np.ndarray, p: np.ndarray) -> np.ndarray:
    x, y = np.clip(np.round(p).astype(int), 0, image.shape[0] - 1)
    return image[y, x]


def _face_pixel(image: np.ndarray, lm: np.ndarray, x: float, y: float, dx: int = 0, dy: int = 0) -> np.ndarray:
    """The pixel at (x, y) of the face frame: origin between the eyes, unit = eye distance, y to the chin."""
    x_axis = lm[1] - lm[0]
    y_axis = np.array([-x_axis[1], x_axis[0]])
    return _pixel(image, (lm[0] + lm[1]) / 2 + x * x_axis + y * y_axis + (dx, dy))


def test_real_metadata_parses():
    if not REAL_META.is_file():
        pytest.skip(f"{REAL_META} is absent (shared data not mounted)")
    rows = read_meta(REAL_META)
    assert len(rows) == 1251 and set(rows[0]) >= set(META_HEADER)


@pytest.mark.integration
def test_layout(corpus):
    rows = read_meta(corpus / "vox1_meta.csv")
    assert (corpus / "vox1_meta.csv").read_text().splitlines()[0] == "\t".join(META_HEADER)
    voiced = {r["VGGFace1 ID"] for r in rows}
    faced = {p.name for p in (corpus / "vggface").iterdir()}
    both = voiced & faced
    assert len(both) == IDENTITIES and voiced - faced and faced - voiced
    for split, letters in SPLIT_LETTERS.items():  # the real letter split gives non-empty sets, mostly train
        assert sum(n[0] in letters for n in both) >= (6 if split == "train" else 1), split
    assert all(len(n.split("_")) == 2 for n in voiced | faced)
    for name, wavs in _voices(corpus).items():
        assert 4 <= len(wavs) <= 8, name
        for path in wavs:
            assert path.parent.parent.name.startswith("id") and len(path.parent.name) == 11 and path.stem.isdigit()
            audio, rate = _load_wav(path)
            assert rate == 16000 and 2.0 <= len(audio) / rate <= 8.0, path
    jpgs = sorted((corpus / "vggface").rglob("*.jpg"))
    assert {str(p.relative_to(corpus / "vggface")) for p in jpgs} == set(_landmarks(corpus))
    with Image.open(jpgs[0]) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    attributes = read_attributes(corpus / "attributes.csv")
    assert set(attributes) == voiced | faced
    for values in attributes.values():
        assert all(isinstance(values[k], float) == (kind == "continuous") for k, kind in ATTRIBUTE_KINDS.items())


@pytest.mark.integration
def test_deterministic_across_workers_and_seed_sensitive(corpus, tmp_path):
    again = generate_corpus(tmp_path / "again", identities=IDENTITIES, seed=0, workers=1)
    assert _tree_hashes(again) == _tree_hashes(corpus)
    other = generate_corpus(tmp_path / "other", identities=IDENTITIES, seed=1)
    assert _tree_hashes(other) != _tree_hashes(corpus)


@pytest.mark.integration
def test_sexes_differ_in_f0(corpus):
    attributes = read_attributes(corpus / "attributes.csv")
    per_sex = {"m": [], "f": []}
    for name, wavs in _voices(corpus).items():
        medians = []
        for path in wavs:
            audio = torch.from_numpy(_load_wav(path)[0])
            f0 = torchaudio.functional.detect_pitch_frequency(audio, 16000, freq_low=60)  # one value / 10 ms
            energy = audio[: len(audio) // 160 * 160].reshape(-1, 160).pow(2).mean(1).sqrt()
            n = min(len(energy), f0.shape[-1])
            medians.append(f0[:n][energy[:n] > 0.25 * energy.max()].median().item())  # voiced frames only
        per_sex[attributes[name]["sex"]].append(np.median(medians))
    assert np.median(per_sex["f"]) - np.median(per_sex["m"]) >= 60, per_sex


def test_speaking_rate_is_heard(corpus):
    """Syllable nuclei (peaks of the 20 ms energy envelope) per second of speech follow rate_wpm."""
    attributes = read_attributes(corpus / "attributes.csv")
    rates, syllable_rates = [], []
    for name, wavs in _voices(corpus).items():
        per_utt = []
        for path in wavs:
            audio = _load_wav(path)[0]
            energy = np.sqrt((audio[: len(audio) // 320 * 320].reshape(-1, 320) ** 2).mean(1))
            envelope = np.convolve(energy, np.ones(3) / 3, "same")
            speech = np.nonzero(energy > 0.1 * energy.max())[0]
            peaks, _ = find_peaks(envelope, height=0.15 * envelope.max(), prominence=0.1 * envelope.max(), distance=4)
            per_utt.append(len(peaks) / ((speech[-1] - speech[0]) * 0.02))
        rates.append(attributes[name]["rate_wpm"])
        syllable_rates.append(np.mean(per_utt))
    assert np.corrcoef(rates, syllable_rates)[0, 1] >= 0.6


def test_face_traits_are_in_the_pixels(corpus):
    """Cheek colour follows skin_tone; hair beside the neck follows hair_length (|r| >= 0.8)."""
    attributes = read_attributes(corpus / "attributes.csv")
    landmarks = _landmarks(corpus)
    cheek, hair, skin_tone, hair_length = [], [], [], []
    for folder in sorted((corpus / "vggface").iterdir()):
        cheek_i, hair_i = [], []
        for jpg in sorted(folder.glob("*.jpg")):
            image = np.asarray(Image.open(jpg), dtype=np.float64)
            lm = landmarks[f"{folder.name}/{jpg.name}"]
            cheeks = [(s * 0.45, 0.5, dx, dy) for s in (-1, 1) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
            cheek_i.append(np.mean([_face_pixel(image, lm, *args) for args in cheeks]))
            crown = np.mean([_face_pixel(image, lm, x, -1.2) for x in (-0.1, 0, 0.1)], axis=0)
            beside_neck = [_face_pixel(image, lm, s * 1.2, y) for s in (-1, 1) for y in np.arange(1.0, 2.8, 0.1)]
            hair_i.append(np.mean([np.linalg.norm(p - crown) < 35 for p in beside_neck]))
        cheek.append(np.mean(cheek_i))
        hair.append(np.mean(hair_i))
        skin_tone.append(attributes[folder.name]["skin_tone"])
        hair_length.append(attributes[folder.name]["hair_length"])
    assert np.corrcoef(cheek, skin_tone)[0, 1] >= 0.8
    assert np.corrcoef(hair, hair_length)[0, 1] >= 0.8


def test_landmarks_hit_the_features(corpus):
    for path, lm in _landmarks(corpus).items():
        image = np.asarray(Image.open(corpus / "vggface" / path), dtype=np.float64)
        rgb = partial(_pixel, image)
        eye_mid, mouth_mid = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
        cheek = rgb(eye_mid + 0.45 * (mouth_mid - eye_mid) + 0.8 * (lm[1] - lm[0]) / 2)
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], path  # image-left first
        for eye in lm[:2]:  # the pupil: darker than the cheek
            assert rgb(eye).mean() < cheek.mean() - 15, path
        down = np.array([lm[0, 1] - lm[1, 1], lm[1, 0] - lm[0, 0]])  # eye-distance long, toward the chin
        below_corners = [rgb(mouth_mid + t * down) for t in np.linspace(0, 0.15, 6)]  # a smile lifts the corners
        redness = cheek[0] - cheek[1]
        on_mouth = [np.linalg.norm(p - cheek) > 20 or p[0] - p[1] > redness + 12 for p in below_corners]
        assert any(on_mouth), path  # lips (redder than skin), teeth or the open mouth


def test_landmarks_scale_with_the_render_size(monkeypatch):
    """The same draws at 128 px give the same picture and the same landmarks, in pixel-centre coordinates:
    p256 = (p128 + 0.5) * 2 - 0.5 exactly, the 256 px image halved within the sensor noise and edge pixels."""
    from datamodules.synthetic import faces

    person = next(p for p in sample_identities(3, seed=0) if p.has_face)
    image, landmarks = faces.render_face(person.traits, np.random.default_rng(0))
    monkeypatch.setattr(faces, "IMAGE_SIZE", 128)
    small, small_landmarks = faces.render_face(person.traits, np.random.default_rng(0))
    assert image.shape == (256, 256, 3) and small.shape == (128, 128, 3)
    np.testing.assert_allclose(landmarks, (small_landmarks + 0.5) * 2 - 0.5, atol=1e-9)
    assert np.abs(image.reshape(128, 2, 128, 2, 3).mean((1, 3)) - small).mean() < 4  # about 2 seen


@pytest.mark.integration
def test_ensure_corpus_caches(tmp_path, monkeypatch):
    first = ensure_corpus(tmp_path, identities=3, seed=5)
    monkeypatch.setattr(corpus_module, "generate_corpus", lambda *a, **k: pytest.fail("regenerated a cached corpus"))
    assert corpus_module.ensure_corpus(tmp_path, identities=3, seed=5) == first
    assert read_meta(first / "vox1_meta.csv")


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_module, "_build_identity", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path / "c", identities=3, workers=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError, match="not an empty folder"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        generate_corpus(tmp_path / "full", identities=3)


def test_bad_attributes_file_names_itself(tmp_path):
    bad = tmp_path / "attributes.csv"
    bad.write_text("VGGFace1 ID,sex\nA_B,m\n")
    with pytest.raises(ValueError, match="attributes.csv: missing columns"):
        read_attributes(bad)


def test_contact_sheet(corpus, tmp_path):
    png = contact_sheet(corpus, tmp_path / "sheet.png")
    with Image.open(png) as im:
        faces = len(list((corpus / "vggface").iterdir()))
        assert im.width > 3 * 4 * 96 and im.height >= -(-faces // 3) * 96


def test_default_corpus_gives_held_out_figures_power():
    """The embedded data config's corpus holds >= 24 test and >= 12 validation identities (issue: evaluation
    figures resting on 6 speakers say little)."""
    from omegaconf import OmegaConf

    from datamodules.synthetic.traits import split_sizes

    identities = OmegaConf.load(Path(__file__).parents[1] / "experiments/conf/data/embedded.yaml").corpus.identities
    sizes = split_sizes(identities)
    assert sizes["test"] >= 24 and sizes["val"] >= 12 and sum(sizes.values()) == identities
    assert split_sizes(120) == {"train": 75, "val": 15, "test": 30}
    people = sample_identities(120, seed=0)
    complete = [p for p in people if p.has_voice and p.has_face]
    for split, letters in SPLIT_LETTERS.items():
        assert sum(p.name[0] in letters for p in complete) == sizes[split]


def test_the_next_generation_removes_partials_of_dead_runs_only(tmp_path):
    import os
    import subprocess

    from datamodules.synthetic.corpus import remove_stale_partials

    out = tmp_path / "corpus"
    dead = subprocess.Popen(["true"])  # a process that has ended: its pid names no live process
    dead.wait()
    for label, pid in (("dead", dead.pid), ("live", os.getpid())):
        folder = tmp_path / f".corpus.partial-{label}"
        folder.mkdir()
        (folder / ".owner").write_text(f"{pid}\n")
        (folder / "big.wav").write_bytes(b"x" * 1000)
    assert remove_stale_partials(out) == [tmp_path / ".corpus.partial-dead"]
    assert (tmp_path / ".corpus.partial-live").is_dir()
