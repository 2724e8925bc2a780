"""The pickle-free model folder (experiments.export format=pretrained, lightning_modules/io/model_folder.py): it
round-trips bit for bit, loads without any unpickling, is taken by generate, evaluate's loader, the projector and
model.generator_init, and refuses a tampered file or a class outside the allowlist."""

import json
import pickle
from pathlib import Path

import hydra
import numpy as np
import pytest
import soundfile as sf
import torch
from huggingface_hub import ModelCard
from test_evaluate import SMOKE, smoke_checkpoint
from test_export import export_command

from experiments.export import export_pretrained
from experiments.generate import run as generate_run
from lightning_modules.io.legacy import load_generator, load_pretrained
from lightning_modules.voice2face import Voice2FaceGAN
from lightning_modules.voice2face_checkpoint import model_from_checkpoint, read_checkpoint

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"
DATA = {"features": {"kind": "logmel", "preemphasis": 0.95}, "vad": {}, "eval_min_frames": 1000, "face_size": 16}


@pytest.fixture
def trained(tmp_path):
    """A smoke checkpoint with the voice pipeline's hyper-parameters, a W+ voice head and an averaged encoder (what
    generate embeds with), its weights moved off their init so that nothing is trivially equal, and an evaluation
    beside it."""
    torch.manual_seed(0)
    model = Voice2FaceGAN(**{**SMOKE, "latent_space": "wplus", "encoder_ema": True})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    state.update(datamodule_hyper_parameters=DATA, voice2face_progress={"cur_nimg": 12000, "iteration": 3})
    torch.save(state, ckpt)
    metrics = {"kimg": 12.0, "attr/sex": 0.9, "attr/sex/ci95": [0.8, 0.97], "attr/sex/chance": 0.5}
    (ckpt.parent / "metrics_test.json").write_text(json.dumps({**metrics, "attr/sex/shuffled": 0.49}))
    return ckpt, model.eval()


def voices():
    return torch.randn([3, SMOKE["feature_dim"], 200], generator=torch.Generator().manual_seed(5))


def test_the_folder_round_trips_bit_for_bit_without_unpickling(trained, tmp_path, monkeypatch, capsys):
    ckpt, model = trained
    out = tmp_path / "v2f-model"
    code, stdout, _ = export_command(monkeypatch, capsys, f"ckpt={ckpt}", "format=pretrained", f"out={out}")
    assert code == 0 and "read back as generate reads it" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "v2f-model"]  # no temporary folder left

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a model folder was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, no_unpickling)
    state = read_checkpoint(out)
    rebuilt = model_from_checkpoint(state)
    with torch.no_grad():
        assert torch.equal(rebuilt.generate(voices()), model.generate(voices()))
    assert rebuilt.cur_nimg == 12000 and state["datamodule_hyper_parameters"]["features"]["kind"] == "logmel"
    G, d_kwargs, d_state = load_pretrained(out, impl="torch")  # model.generator_init and the projector's reader
    assert d_state is None and G.num_ws == model.G_ema.num_ws
    monkeypatch.undo()
    assert torch.equal(load_generator(out).synthesis.b4.const, model.G_ema.synthesis.b4.const)


def test_the_model_card_quotes_the_evaluation_and_states_the_limits(trained, tmp_path):
    ckpt, _ = trained
    export_pretrained(ckpt, tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")  # huggingface_hub reads its metadata block
    assert card.data.library_name == "voice2face" and "voice-to-face" in card.data.tags
    assert "| 0.900 | [0.800, 0.970] | chance 0.500, shuffled 0.490 |" in card.text
    assert "`metrics_test.json` (test split, 12.0 kimg)" in card.text
    for words in ("A voice does not determine a face", "Bias:", "Consent:", "embedded synthetic corpus"):
        assert words in card.text


def test_generate_takes_the_folder(trained, tmp_path):
    speech = pytest.importorskip("datamodules.synthetic.voices")
    ckpt, _ = trained
    export_pretrained(ckpt, tmp_path / "m")
    traits = {"language": "en-us", "voice_variant": "m3", "pitch": 50, "pitch_range": 50, "rate_wpm": 160}
    sf.write(tmp_path / "a.wav", speech.make_utterance(traits, np.random.default_rng(0)), speech.SAMPLE_RATE)
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra.compose(
            "generate", [f"ckpt={tmp_path / 'm'}", f"audio={tmp_path / 'a.wav'}", f"out={tmp_path / 'out'}"]
        )
    assert generate_run(cfg) == 0 and (tmp_path / "out" / "a.wav.png").is_file()


def test_a_tampered_header_is_refused_by_name(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "m"
    export_pretrained(ckpt, out)
    data = bytearray((out / "model.safetensors").read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    data[8 : 8 + header_len] = data[8 : 8 + header_len].replace(b'"data_offsets":[0,', b'"data_offsets":[9,')
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m/model.safetensors: not a readable safetensors file .*export the model"):
        read_checkpoint(out)
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"m/model.safetensors: not a readable safetensors file"):
        read_checkpoint(out)


def test_a_class_outside_the_allowlist_is_refused(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "m"
    export_pretrained(ckpt, out)
    config = json.loads((out / "config.json").read_text())
    config["hyper_parameters"]["generator"]["_target_"] = "os.system"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`_target_` 'os.system' is not one of the project's networks"):
        read_checkpoint(out)
    (out / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(ValueError, match=r"m/config.json: not a voice2face model folder's config"):
        read_checkpoint(out)


def test_export_refusals_write_nothing(trained, tmp_path, monkeypatch, capsys):
    ckpt, _ = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, stderr = export_command(monkeypatch, capsys, f"ckpt={ckpt}", "format=pretrained", f"out={busy}")
    assert code == 1 and "already holds files" in stderr
    code, _, stderr = export_command(
        monkeypatch, capsys, f"ckpt={ckpt}", "format=pretrained", f"out={busy}", "overwrite=true"
    )
    assert code == 1 and "replaces only a model folder" in stderr and (busy / "notes.txt").read_text() == "mine"
    g = smoke_checkpoint(tmp_path / "plain.ckpt")
    code, _, _ = export_command(monkeypatch, capsys, f"ckpt={g}", "format=pretrained", f"out={tmp_path / 'ok'}")
    assert code == 0  # a checkpoint without the voice pipeline's hyper-parameters still exports its networks
    with pytest.raises(ValueError, match=r"busy: a folder, not a file; ckpt= must name .* or a model folder"):
        read_checkpoint(busy)
    (busy / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"busy: a folder, but not a model folder \(it needs model.safetensors"):
        read_checkpoint(busy)
