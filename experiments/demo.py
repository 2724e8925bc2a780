"""Speak and see the face: `python -m experiments.demo ckpt=PATH` (or `make demo`), a Gradio page on 127.0.0.1.

PATH is a training checkpoint or a model folder (experiments.export format=pretrained). The voice goes through the
checkpoint's own pipeline, as in generate: load, webrtcvad, features, short clips tiled as in training's held-out
protocol, and silero-vad's "no speech found". The page shows the face, variations (truncation ψ, and noise where
the model has a noise input), how much speech was used, what the face probe reads off the face, the training
speakers whose real faces are nearest to it, and a style mix of two voices. The probe and the nearest faces need
the run's training data (its corpus, rebuilt from the checkpoint's data settings); without it the page says so and
shows the rest. Needs the demo extra: `pip install -e '.[demo]'`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from datamodules.audio import AudioError
from datamodules.cli_errors import one_line_errors
from datamodules.faces import normalize
from datamodules.speech_check import SpeechCheck
from experiments.evaluate import build_datamodule
from experiments.generate import embed_in_windows, front_end_of, voice_features
from experiments.schema import check_command_config
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.settings import ProbeSettings
from lightning_modules.voice2face import Voice2FaceGAN
from lightning_modules.voice2face_checkpoint import model_from_checkpoint, read_checkpoint

log = logging.getLogger(__name__)
VARIATIONS = 4  # faces beside the main one
NEAREST = 3  # training speakers shown
GUESS_NOTE = "These are the model's guesses read off a generated face, not facts about the speaker."
FACE_TRAITS = ("sex", "skin_tone", "hair_colour", "hair_length")  # what a face shows (not pitch, language, ...)


def to_uint8(img: torch.Tensor, size: int = 256) -> np.ndarray:
    """[-1, 1] faces [3, S, S] -> uint8 [size, size, 3], enlarged with nearest neighbours (pixels stay visible)."""
    img = torch.nn.functional.interpolate(img[None].float(), size=(size, size), mode="nearest")[0]
    return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


class Reference:
    """The training speakers' real faces: evaluate's face probe (the shipped one on the embedded corpus), its
    attribute codec, and one mean probe embedding per speaker for the nearest faces."""

    def __init__(self, datamodule, probe: ProbeSettings):  # metrics.probe: evaluate's choice of probe
        self.probe, self.codec, _ = probe_for(datamodule, probe)
        faces = datamodule.faces("train")
        self.names = sorted(faces)
        self.faces = {n: faces[n][0] for n in self.names}  # one photo per speaker to show
        embs = [self.probe.predict(normalize(faces[n]))[0].mean(0) for n in self.names]
        self.embeddings = torch.nn.functional.normalize(torch.stack(embs), dim=1)

    @torch.no_grad()
    def read(self, face: torch.Tensor) -> tuple[dict, list[tuple[str, float]]]:
        """({attribute: {value: probability} or value}, [(nearest speaker, cosine)]) of one [-1, 1] face."""
        emb, _, heads = self.probe(face[None].to(self.probe.identity.weight.dtype))
        guesses = {}
        for name, out in heads.items():
            if self.codec is None or name not in FACE_TRAITS:
                continue
            if self.codec.kinds[name] == "categorical":
                probs = out[0].softmax(0)
                guesses[name] = {v: float(p) for v, p in zip(self.codec.vocab[name], probs)}
            else:
                mean, std = self.codec.stats[name]
                guesses[name] = float(out[0, 0]) * std + mean
        cos = self.embeddings @ torch.nn.functional.normalize(emb, dim=1)[0]
        top = cos.topk(min(NEAREST, len(self.names)))
        return guesses, [(self.names[i], float(c)) for c, i in zip(top.values, top.indices)]


class Demo:
    """What the page does, without the page: tested on its own (tests/test_demo.py)."""

    def __init__(self, model: Voice2FaceGAN, front, speech: SpeechCheck | None, reference: Reference | None):
        self.model, self.front, self.speech, self.reference = model, front, speech, reference

    def embed(self, path) -> tuple[torch.Tensor, float]:
        """(voice embedding [1, D], seconds of speech) of an audio file; AudioError naming the file if unusable."""
        feats, seconds = voice_features(self.front, path, self.speech)
        return embed_in_windows(self.model, feats), float("nan") if seconds is None else seconds

    @torch.no_grad()
    def faces(self, emb: torch.Tensor, psi: float) -> tuple[torch.Tensor, list[torch.Tensor], str]:
        """(the face, its variations, what varies) for a voice embedding."""
        m = self.model
        face = m.generate_from(emb, noise_mode="const", truncation_psi=psi)[0]
        if m.hparams.noise_z_dim > 0:  # the model's own noise input: faces this voice could also have
            g = torch.Generator(device=emb.device).manual_seed(0)
            noises = torch.randn([VARIATIONS, m.hparams.noise_z_dim], generator=g, device=emb.device)
            faces = m.generate_from(emb.expand(VARIATIONS, -1), "const", psi, noise=noises)
            return face, list(faces), "noise input, seeds 0-3"
        psis = [1.0, 0.75, 0.5, 0.25][:VARIATIONS]
        return face, [m.generate_from(emb, "const", p)[0] for p in psis], "truncation ψ " + ", ".join(map(str, psis))

    @torch.no_grad()
    def mix(self, emb_coarse: torch.Tensor, emb_fine: torch.Tensor) -> torch.Tensor | None:
        """Coarse layers (4-8 px: pose, face shape) from one voice, the rest (features, colour) from the other;
        None for a generator without ws."""
        G = self.model.G_ema
        if not hasattr(G, "synthesis") or not hasattr(G.mapping, "num_ws"):
            return None
        ws_a, ws_b = G.mapping(self.model.latent(emb_coarse)), G.mapping(self.model.latent(emb_fine))
        coarse = 4  # NVlabs' style-mixing figure: the 4x4 and 8x8 layers
        return G.synthesis(torch.cat([ws_a[:, :coarse], ws_b[:, coarse:]], dim=1), noise_mode="const")[0]

    def __call__(self, audio, audio_mix=None, psi: float = 1.0) -> dict:
        """Everything the page shows for an uploaded or recorded file (and a second one to mix with); a bad file
        is a message, never an exception."""
        start = time.perf_counter()
        if not audio:
            return {"message": "Record or upload a voice first."}
        try:
            emb, seconds = self.embed(audio)
        except AudioError as err:
            return {"message": f"⚠ {Path(err.path).name}: {err.reason}"}
        face, variations, varies = self.faces(emb, psi)
        out = {"face": face, "variations": variations, "varies": varies, "speech_seconds": seconds}
        out["message"] = f"{seconds:.1f} s of speech found and used (silero-vad)."
        if self.reference is not None:
            out["guesses"], out["nearest"] = self.reference.read(face)
        if audio_mix:
            try:
                out["mix"] = self.mix(emb, self.embed(audio_mix)[0])
            except AudioError as err:
                out["message"] += f" ⚠ second voice {Path(err.path).name}: {err.reason}"
        out["seconds"] = time.perf_counter() - start
        return out


def guesses_markdown(guesses: dict) -> str:
    lines = [f"*{GUESS_NOTE}*", ""]
    for name, value in guesses.items():
        if isinstance(value, dict):
            top = sorted(value.items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"- **{name}**: " + ", ".join(f"{v} {p:.0%}" for v, p in top))
        else:
            lines.append(f"- **{name}**: {value:.2f}")
    return "\n".join(lines)


def build_page(demo: Demo, reference_faces: dict | None):
    import gradio as gr

    with gr.Blocks(title="voice2face") as page:
        gr.Markdown("# voice2face\nSpeak or upload a recording; the model draws the face it associates with the voice.")
        with gr.Row():
            voice = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Voice")
            voice_mix = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Second voice (style mix)")
        psi = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation ψ (1: as trained; lower: nearer the mean)")
        button = gr.Button("Draw the face", variant="primary")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            face = gr.Image(label="Face", elem_id="face", type="numpy")
            mix = gr.Image(label="Style mix: coarse layers of the voice, fine of the second", type="numpy")
        variations = gr.Gallery(label="Variations", columns=VARIATIONS)
        guesses = gr.Markdown()
        nearest = gr.Gallery(label="Training speakers with the nearest real faces", columns=NEAREST)

        def run(audio, audio_mix, psi_value):
            out = demo(audio, audio_mix, psi_value)
            if "face" not in out:
                return out["message"], None, None, [], "", []
            out.setdefault("nearest", [])
            near = [
                (to_uint8(normalize(reference_faces[n][:1])[0]), f"{n} (cosine {c:.2f})")
                for n, c in out.get("nearest", [])
            ]
            return (
                f"{out['message']} Drawn in {out['seconds']:.2f} s.",
                to_uint8(out["face"]),
                to_uint8(out["mix"]) if out.get("mix") is not None else None,
                [(to_uint8(v), None) for v in out["variations"]],
                guesses_markdown(out["guesses"]) if "guesses" in out else "*No training data here: no probe reading.*",
                near,
            )

        button.click(run, [voice, voice_mix, psi], [status, face, mix, variations, guesses, nearest])
    return page


def load_demo(path: str, device: str = "cpu", probe: ProbeSettings | None = None) -> tuple[Demo, dict | None]:
    """The Demo of a checkpoint or model folder, loaded once: the model, its voice pipeline, silero-vad and, where
    the run's corpus can be rebuilt and `probe` (metrics.probe) is given, the reference (probe and training
    faces)."""
    state = read_checkpoint(path)
    model = model_from_checkpoint(state, device)
    reference, faces = None, None
    if probe is not None:
        try:
            dm = build_datamodule(state)
            reference = Reference(dm, probe)
            faces = {n: face[None] for n, face in reference.faces.items()}  # the one photo a speaker shows
        except (OSError, ValueError, RuntimeError) as err:  # no corpus here: the page shows the rest
            log.warning("no probe reading or nearest faces: the run's training data is not here (%s)", err)
    return Demo(model, front_end_of(state), SpeechCheck(), reference), faces


def run(cfg: DictConfig) -> int:
    check_command_config(cfg, "demo")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError("the demo needs Gradio: pip install -e '.[demo]'") from None
    probe = ProbeSettings.of(cfg.metrics.probe, "metrics.probe") if cfg.reference else None
    demo, faces = load_demo(cfg.ckpt, cfg.device, probe)
    page = build_page(demo, faces)
    page.launch(server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=cfg.get("background", False))
    return 0


@hydra.main(config_path="conf", config_name="demo", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
