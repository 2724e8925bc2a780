"""experiments.demo: what the page shows for a voice, and messages for bad input (no Gradio needed); the page in a
real browser (Playwright driving Debian's chromium), skipped where the demo extra or chromium is absent."""

import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import probe_settings
from test_evaluate import SMOKE

from datamodules.pipeline import VoicePipeline
from datamodules.speech_check import SpeechCheck
from experiments.demo import GUESS_NOTE, Demo, Reference, build_page, guesses_markdown
from lightning_modules.voice2face import Voice2FaceGAN

speech = pytest.importorskip("datamodules.synthetic.voices")
CHROMIUM = Path("/usr/bin/chromium")


class ReferenceData:
    """The datamodule surface the demo's reference reads, with attributes other than the shipped probe's (so the
    probe is retrained on these faces)."""

    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.train = {f"id{i:02d}": torch.randint(0, 256, (2, 3, 16, 16), generator=g).byte() for i in range(n)}
        self.attributes = {name: {"sex": "mf"[i % 2], "skin_tone": i / n} for i, name in enumerate(self.train)}
        self.attribute_kinds = {"sex": "categorical", "skin_tone": "continuous"}

    def faces(self, split):
        return self.train


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    model = Voice2FaceGAN(**{**SMOKE, "latent_space": "wplus"}).eval()
    front = VoicePipeline({"kind": "logmel", "preemphasis": 0.95}, {}, eval_min_frames=1000)
    data = ReferenceData()
    return Demo(model, front, SpeechCheck(), Reference(data, probe_settings())), data.train


@pytest.fixture(scope="module")
def voice_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("voice") / "voice.wav"
    traits = {"language": "en-us", "voice_variant": "f2", "pitch": 60, "pitch_range": 50, "rate_wpm": 160}
    sf.write(path, speech.make_utterance(traits, np.random.default_rng(1)), speech.SAMPLE_RATE)
    return path


@pytest.mark.integration
def test_a_voice_gives_a_face_its_variations_a_reading_the_nearest_and_a_mix(demo, voice_wav, tmp_path):
    demo, _ = demo
    out = demo(str(voice_wav), str(voice_wav), psi=1.0)
    assert out["face"].shape == (3, 16, 16) and len(out["variations"]) == 4
    assert out["varies"].startswith("truncation")  # this model has no noise input
    assert torch.equal(out["variations"][0], out["face"])  # ψ = 1 is the face itself
    assert 2.0 < out["speech_seconds"] < 6.0 and "s of speech found and used" in out["message"]
    assert set(out["guesses"]) == {"sex", "skin_tone"} and abs(sum(out["guesses"]["sex"].values()) - 1) < 1e-6
    assert len(out["nearest"]) == 3 and all(name.startswith("id") for name, _ in out["nearest"])
    assert torch.allclose(out["mix"], out["face"], atol=1e-5)  # a voice mixed with itself is its own face
    assert GUESS_NOTE in guesses_markdown(out["guesses"])


def test_bad_input_is_a_message(demo, tmp_path):
    demo, _ = demo
    noise = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.3
    sf.write(tmp_path / "noise.wav", noise, 16000)
    (tmp_path / "text.wav").write_text("not audio")
    assert demo(str(tmp_path / "noise.wav"))["message"].startswith("⚠ noise.wav: no speech found")
    assert demo(str(tmp_path / "text.wav"))["message"].startswith("⚠ text.wav: not a readable audio file")
    assert demo(None)["message"] == "Record or upload a voice first."


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_page_in_a_real_browser(demo, voice_wav, tmp_path):
    """Upload a corpus-like WAV, press the button, wait for the face; then a file without speech."""
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    playwright = pytest.importorskip("playwright.sync_api", reason="the demo extra is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package)")
    demo, faces = demo
    port = _free_port()
    page_app = build_page(demo, faces)
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    shot = Path(__file__).resolve().parents[1] / "outputs" / "demo_test.png"
    shot.parent.mkdir(exist_ok=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("input[type=file]").first.set_input_files(str(voice_wav))
            page.get_by_role("button", name="Draw the face").click()
            face = page.locator("#face img")
            face.wait_for(timeout=60_000)
            assert face.get_attribute("src")
            page.wait_for_function("document.querySelector('#status').innerText.includes('speech found')")
            page.screenshot(path=str(shot), full_page=True)
            sf.write(tmp_path / "silence.wav", np.zeros(32000, dtype=np.float32), 16000)
            page.goto(f"http://127.0.0.1:{port}/")  # a fresh page: the served app is the same
            page.locator("input[type=file]").first.set_input_files(str(tmp_path / "silence.wav"))
            page.get_by_role("button", name="Draw the face").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('⚠ silence.wav')")
            browser.close()
    finally:
        page_app.close()
