"""evaluate() on stand-in model and data; the report table; the evaluate command on a smoke checkpoint."""

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import metrics_settings
from omegaconf import OmegaConf
from PIL import Image
from test_metrics import LinearG, PixelFeatures
from torch import nn

from lightning_modules.metrics import evaluate
from lightning_modules.metrics.families import fid_note

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"
PALETTE = {"red": (0.8, -0.8, -0.8), "blue": (-0.8, -0.8, 0.8), "green": (-0.8, 0.8, -0.8)}


def colour_faces(colour, n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(PALETTE[colour])[:, None, None].expand(3, size, size)
    return ((base + 0.1 * torch.randn(n, 3, size, size, generator=g)) * 127.5 + 127.5).clamp(0, 255).byte()


class StandInData:
    """Six identities (4 train, 2 test); a voice 'encodes' its speaker's colour in its first 3 bands."""

    split_ids = {"train": ["t0", "t1", "t2", "t3"], "test": ["x0", "x1"]}
    colours = {"t0": "red", "t1": "blue", "t2": "green", "t3": "red", "x0": "blue", "x1": "green"}
    attribute_kinds = {"colour": "categorical", "level": "continuous"}

    def __init__(self, bands=4, size=8):
        self.bands, self.size, self.feature_dim = bands, size, bands
        self.attributes = {n: {"colour": c, "level": float(i)} for i, (n, c) in enumerate(self.colours.items())}

    def prepare_data(self):
        pass

    def setup(self, stage=None):
        pass

    def identities(self, split):
        return self.split_ids[split]

    def faces(self, split):
        ids = self.split_ids[split]
        return {n: colour_faces(self.colours[n], 4, self.size, seed=i) for i, n in enumerate(ids)}

    def test_dataloader(self):
        yield from self._voices("test")

    def train_dataloader(self):  # what the voice family reads (its shuffle and crops do not matter here)
        yield from self._voices("train")

    def _voices(self, split):
        names = self.split_ids[split]
        for start in (0, 3):
            labels = torch.tensor([i % len(names) for i in range(start, start + 3)])
            audio = torch.zeros(3, self.bands, 10)
            audio[:, :3] = torch.stack([torch.tensor(PALETTE[self.colours[names[i]]]) for i in labels])[..., None]
            yield {
                "audio": audio,
                "audio_lengths": torch.full((3,), 10),
                "label": labels,
                "face": torch.zeros(3, 3, 8, 8),
            }


class StandInModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.G_ema = LinearG()
        self.hparams = {"noise_z_dim": 0}

    @property
    def device(self):
        return torch.device("cpu")

    def embed(self, audio, lengths):
        """[B, 6]: the colour in the first 3 bands, then zeros (LinearG's z_dim, for the path length's voices)."""
        colour = audio[:, :3].mean(-1)
        return torch.cat([colour, torch.zeros_like(colour)], dim=1)

    def generate_from(self, emb, noise_mode="const", truncation_psi=1.0, ema=True):
        return emb[:, :3, None, None].expand(-1, 3, 8, 8).clone()

    def generate(self, audio, lengths, noise_mode="const", truncation_psi=1.0, ema=True):
        return self.generate_from(self.embed(audio, lengths))


def mse(a, b):
    return (a - b).square().mean(dim=(1, 2, 3))


def metrics_cfg(**fid):
    """The sections these tests change from the shipped metrics config (conftest.metrics_settings merges them)."""
    return {
        "fid": {"feature": PixelFeatures(), **fid},
        "ppl": {"distance": mse, "num_samples": 20, "batch_size": 8},
        "identity": {"galleries": [2, 100], "repeats": 3},
        "probe": {"steps": 20, "batch_size": 16},
    }


class MSE(nn.Module):
    def forward(self, a, b):
        return mse(a, b)


@pytest.mark.integration
def test_evaluate_reports_every_metric_or_its_reason(tmp_path, empty_hub):
    cfg = metrics_cfg()
    cfg["ppl"]["distance"] = MSE()
    result = evaluate(StandInModel(), StandInData(), metrics_settings(**cfg, cache_dir=str(tmp_path)), split="test")
    assert result["num_generated"] == 6 and result["num_real"] == 8
    for key in (
        "fid",
        "ppl_wend",
        "ppl_zend",
        "id_cosine",
        "recall@1_g2",
        "recall@1_g2/shuffled",
        "recall@1_g2/chance",
        "fd_probe",
        "fd_probe/real",
        "kid_probe",
        "kid_probe/real",
        "attr/colour",
        "attr/colour/chance",
        "attr/colour/oracle",
        "voice_attr/colour",
        "voice_attr/colour/shuffled",
    ):
        assert isinstance(result[key], float), key
    assert result["voice_attr/colour"] == 1.0  # the stand-in voices carry the colour, linearly
    # `level` is continuous: reported under attr_weak/ exactly when the probe cannot read it off real faces
    (level,) = [k for k in ("attr/level", "attr_weak/level") if k in result]
    assert (result[f"{level}/oracle"] < 0.3) == (level == "attr_weak/level")
    assert not any(k.startswith("recall@") and k.endswith("_g100") for k in result)  # never named for 100
    assert "recall@5_g2" not in result  # k >= gallery: 1 by construction, not reported
    assert "split has 2 identities: reported as _g2" in result["_notes"]["recall_g100"]
    low, high = result["recall@1_g2/ci95"]
    assert low <= result["recall@1_g2"] <= high and result["recall@1_g2/chance"] == 0.5
    assert "not comparable with Inception" in result["_notes"]["fd_probe"]
    assert result["_skipped"] == {}
    assert list(tmp_path.glob("fid_real_test-*.pt"))

    cfg = metrics_cfg(feature=None)  # Inception, but no weights anywhere
    cfg["ppl"]["distance"] = None
    cfg["identity"]["embedder"] = "facenet"
    result = evaluate(StandInModel(), StandInData(), metrics_settings(**cfg), split="test")
    assert "fid" not in result and "weights-inception" in result["_skipped"]["fid"]
    assert "vgg16" in result["_skipped"]["ppl_wend"] and "vggface2" in result["_skipped"]["identity"]
    assert "vgg16" in result["_skipped"]["ppl_zend"]
    assert "attr/colour" in result  # the probe does not need downloaded weights


class ZOnlyG(nn.Module):
    """A generator without a mapping network (as DCGAN): z [N, 6] -> img [N, 3, 2, 2]."""

    def __init__(self):
        super().__init__()
        self.z_dim, self.fc = 6, nn.Linear(6, 12)

    def forward(self, z, truncation_psi=1.0, noise_mode="const"):
        return self.fc(z).reshape(-1, 3, 2, 2)


def test_evaluate_measures_only_z_space_without_mapping():
    model = StandInModel()
    model.G_ema = ZOnlyG()
    cfg = metrics_cfg()
    cfg["ppl"]["distance"] = MSE()
    result = evaluate(model, StandInData(), metrics_settings(**cfg), split="test")
    assert "mapping" in result["_skipped"]["ppl_wend"] and result["ppl_zend"] > 0
    assert "pairs of different test utterances' voice embeddings (of 6)" in result["_notes"]["ppl"]


def test_evaluate_rejects_train_split():
    with pytest.raises(ValueError, match="split"):
        evaluate(StandInModel(), StandInData(), metrics_settings(**metrics_cfg()), split="train")


def report_run(folder, **result):
    (folder / "ckpt").mkdir(parents=True)
    result = {"_skipped": {}, "num_generated": 148, "num_real": 240, "kimg": 6.0, **result}
    result["_notes"] = {"ppl": "endpoints (t = 0), latents: voices"}
    (folder / "ckpt" / "metrics_test.json").write_text(json.dumps(result))


def test_report_table_layout(tmp_path):
    from experiments.report import run

    report_run(tmp_path / "BaseModel", fid=30.5, ppl_zend=120.0, id_cosine=0.5)
    report_run(tmp_path / "NoSE", fid=35.0, id_cosine=0.5, _skipped={"ppl_zend": "vgg16 weights not found"})
    cfg = OmegaConf.load("experiments/conf/report.yaml")
    cfg.runs = [str(tmp_path / "BaseModel"), str(tmp_path / "NoSE")]
    cfg.out = str(tmp_path / "table.md")
    table = run(cfg)
    assert "| BaseModel | 30.5 | 120.0 | 28.9 | 131.0 | 0.500 |" in table
    assert "| NoSE | 35.0 | — | 34.0 | 154.0 | 0.500 |" in table
    assert "- ppl_zend (NoSE): vgg16 weights not found" in table
    # the paper's numbers come only with what stands behind ours
    for line in ("seeds per row: 1", "budget: 6.0 kimg", "(generated / real faces): 148 / 240", "ppl_zend, endpoints"):
        assert line in table.split("| Model")[0], line
    assert "its path-length variant is not stated" in table
    assert (tmp_path / "table.md").read_text() == table
    cfg.runs = [str(tmp_path)]
    cfg.labels = None
    with pytest.raises(FileNotFoundError, match="no metrics_val.json"):
        run(OmegaConf.merge(cfg, {"split": "val", "overwrite": True}))


def test_report_marks_an_fid_the_evaluation_warned_about(tmp_path):
    """The evaluation notes an FID of too few generated faces (_notes.fid); the table marks that row and quotes it."""
    from experiments.report import make_table

    note = fid_note(148)
    warned = {"fid": 40.0, "num_generated": 148, "_notes": {"fid": note}}
    plenty = {"fid": 20.0, "num_generated": 5000, "_notes": {}}
    table = make_table([("Few", [warned]), ("Many", [plenty])], [], {}, "t", "ppl_zend")
    assert "| Few | 40.0 ⚠ |" in table and "| Many | 20.0 |" in table and f"⚠ {note}" in table
    assert "⚠" not in make_table([("Many", [plenty])], [], {}, "t", "ppl_zend")


def test_report_rows_over_seeds_are_mean_and_sd(tmp_path):
    from experiments.report import run

    for seed, (fid, recall) in enumerate([(30.0, 0.2), (34.0, 0.4), (32.0, 0.3)]):
        report_run(tmp_path / "BaseModel" / f"seed{seed}", fid=fid, **{"recall@1_g30": recall, "recall@1_g10": 0.9})
    report_run(tmp_path / "ReLU" / "seed0", fid=40.0)
    report_run(tmp_path / "ReLU" / "seed1", fid=44.0, kimg=8.0)
    cfg = OmegaConf.load("experiments/conf/report.yaml")
    cfg.runs = [str(tmp_path / "BaseModel"), str(tmp_path / "ReLU")]
    table = run(cfg)
    assert "| BaseModel | 32.0 ± 2.0 | — | 28.9 | 131.0 | 0.300 ± 0.100 |" in table  # recall@1_all: the g30 one
    assert "| ReLU | 42.0 ± 2.8 | — | 42.0 | 178.0 | — |" in table
    assert "seeds per row: 2 / 3" in table and "budget: 6.0 / 8.0 kimg" in table  # rows that differ say so


SMOKE = {
    "encoder": {
        "_target_": "lightning_modules.nets.audio_encoder.AudioEncoder",
        "embed_dim": 16,
        "widths": [4, 4, 4, 4],
        "blocks": [1, 1, 1, 1],
        "se_reduction": 2,
    },
    "generator": {
        "_target_": "lightning_modules.nets.stylegan2.Generator",
        "w_dim": 16,
        "channel_base": 64,
        "channel_max": 8,
        "mapping_layers": 2,
        "impl": "torch",
    },
    "discriminator": {
        "_target_": "lightning_modules.nets.stylegan2.Discriminator",
        "channel_base": 64,
        "channel_max": 8,
        "impl": "torch",
    },
    "num_classes": 4,
    "feature_dim": 64,
    "img_resolution": 16,
}


def smoke_checkpoint(path, datamodule_hparams=None):
    """An untrained tiny Voice2FaceGAN saved as a Lightning checkpoint (what load_from_checkpoint reads)."""
    from lightning_modules.voice2face import Voice2FaceGAN

    torch.manual_seed(0)
    model = Voice2FaceGAN(**SMOKE)
    state = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": "2.6.0",
    }
    if datamodule_hparams is not None:
        state["datamodule_hyper_parameters"] = datamodule_hparams
    torch.save(state, path)
    return path


def evaluate_cfg(ckpt, *extra):
    """The evaluate command's config for `ckpt`, with metric networks small enough for a test."""
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra.compose(
            "evaluate",
            overrides=[
                f"ckpt={ckpt}",
                "device=cpu",
                "metrics.fid.feature={_target_:test_metrics.PixelFeatures}",
                "metrics.ppl.distance={_target_:test_evaluate.MSE}",
                "metrics.ppl.num_samples=16",
                "metrics.probe.steps=20",
                "metrics.identity.repeats=2",
                *extra,
            ],
        )


@pytest.mark.integration
def test_evaluate_command_on_smoke_checkpoint(tmp_path, monkeypatch):
    """experiments.evaluate end to end on a real (tiny) Voice2FaceGAN checkpoint; data from a stand-in."""
    import experiments.evaluate as command

    (tmp_path / "run").mkdir()
    ckpt = smoke_checkpoint(tmp_path / "run" / "last.ckpt")
    monkeypatch.setattr(command, "build_datamodule", lambda ckpt, overrides, setup=True: StandInData(64, 16))
    result = command.run(evaluate_cfg(ckpt))
    saved = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert saved["fid"] == pytest.approx(result["fid"]) and saved["ppl_wend"] > 0
    assert saved["_meta"]["generator"] == "lightning_modules.nets.stylegan2.Generator"
    summary = (tmp_path / "run" / "metrics_test.md").read_text()
    assert "| FID |" in summary and "recall_g100: gallery of 100 asked for, but the split has 2 identities" in summary
    assert list((tmp_path / "run" / "fid_cache").glob("fid_real_test-*.pt"))


def edited_checkpoint(path, edit, datamodule_hparams=None):
    smoke_checkpoint(path, datamodule_hparams)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def test_a_checkpoint_loads_without_its_stage1_encoder_file(tmp_path):
    """A two-stage run's checkpoint names its stage-1 encoder.pt; moved or handed over, that file is gone, and
    the checkpoint holds the encoder's weights anyway."""
    from experiments.evaluate import load_model

    def frozen(state):
        state["hyper_parameters"].update(encoder_mode="frozen", encoder_ckpt=str(tmp_path / "gone" / "encoder.pt"))

    ckpt = edited_checkpoint(tmp_path / "last.ckpt", frozen)
    model = load_model(ckpt)
    assert model.hparams.encoder_mode == "frozen" and model.hparams.encoder_ckpt.endswith("gone/encoder.pt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in model.encoder.state_dict().items())
    assert not any(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize(
    "edit, words",
    [
        (
            lambda s: s["hyper_parameters"].update(new_knob=3),
            r"Voice2FaceGAN .* not take \['new_knob'\]",
        ),
        (
            lambda s: s["hyper_parameters"].pop("num_classes"),
            r"Voice2FaceGAN .* needs \['num_classes'\]",
        ),
        (lambda s: s["hyper_parameters"].update(encoder_mode="bogus"), r"encoder_mode 'bogus' is not one of"),
    ],
)
def test_a_checkpoint_of_another_version_names_its_arguments(tmp_path, edit, words):
    """These were TypeError tracebacks in generate and evaluate."""
    from experiments.evaluate import load_model

    ckpt = edited_checkpoint(tmp_path / "last.ckpt", edit)
    with pytest.raises(ValueError, match=rf"{ckpt}: hyper_parameters: {words}.*use the version that wrote it"):
        load_model(ckpt)


def test_a_checkpoint_of_another_format_is_refused_by_its_version(tmp_path):
    """A checkpoint whose networks sit at another version's paths (format 1: before lightning_modules.nets) is
    named as such, not as a file naming networks outside the project."""
    from experiments.evaluate import load_model

    ckpt = edited_checkpoint(tmp_path / "last.ckpt", lambda s: s.update(voice2face_format=1))
    with pytest.raises(ValueError, match=rf"{ckpt}: written by another version .*format 1, this code reads 2"):
        load_model(ckpt)


def test_datamodule_arguments_of_another_version_are_named(tmp_path):
    from experiments.evaluate import data_hparams

    ckpt = edited_checkpoint(tmp_path / "last.ckpt", lambda s: None, {"corpus": "small", "new_knob": 1})
    with pytest.raises(ValueError, match=rf"{ckpt}: datamodule_hyper_parameters .* not take \['new_knob'\]"):
        data_hparams(ckpt)
    clean = smoke_checkpoint(tmp_path / "clean.ckpt", {"corpus": "small"})
    legacy = {"kind": "logmel", "preemphasis": 0.97}  # a log-mel config without one predates the 0.95 default
    assert data_hparams(clean, {"root": "/data"}) == {"corpus": "small", "root": "/data", "features": legacy}
    with pytest.raises(ValueError, match=r"not take \['rooot'\].*fix data_overrides"):
        data_hparams(clean, {"rooot": "/data"})


@pytest.mark.integration
def test_evaluate_keeps_the_metrics_of_another_checkpoint(tmp_path, monkeypatch):
    """Two snapshots of a run evaluated into their folder: the second replaced the first's metrics_test.json."""
    import experiments.evaluate as command

    (tmp_path / "run").mkdir()
    first = smoke_checkpoint(tmp_path / "run" / "snapshot-1.ckpt")
    second = smoke_checkpoint(tmp_path / "run" / "snapshot-2.ckpt")
    monkeypatch.setattr(command, "build_datamodule", lambda ckpt, overrides, setup=True: StandInData(64, 16))
    command.run(evaluate_cfg(first))
    kept = (tmp_path / "run" / "metrics_test.json").read_bytes()
    with pytest.raises(FileExistsError, match=rf"metrics_test.json: holds the metrics of {first} .*overwrite=true"):
        command.run(evaluate_cfg(second))
    assert (tmp_path / "run" / "metrics_test.json").read_bytes() == kept
    command.run(evaluate_cfg(first))  # the same checkpoint again: its own figures, replaced
    command.run(evaluate_cfg(second, "overwrite=true"))
    assert json.loads((tmp_path / "run" / "metrics_test.json").read_text())["_meta"]["ckpt"] == str(second)


def test_evaluate_values_outside_their_domain_are_named_before_any_work(tmp_path):
    import experiments.evaluate as command

    with pytest.raises(ValueError, match=r"config: device: 'gpu' does not match .*; split: 'train' is not one of"):
        command.run(evaluate_cfg(tmp_path / "x.ckpt", "device=gpu", "split=train"))  # device: a RuntimeError


def test_report_refuses_a_run_folder_with_several_metrics(tmp_path):
    """The newest metrics_test.json was taken: a snapshot evaluated after training stood for the whole run."""
    from experiments.report import run

    for folder, fid in [(tmp_path / "run", 20.0), (tmp_path / "run" / "checkpoints" / "snap50", 90.0)]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics_test.json").write_text(json.dumps({"fid": fid, "_skipped": {}}))
    cfg = OmegaConf.load("experiments/conf/report.yaml")
    cfg.runs = [str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"run: 2 metrics_test.json files \(checkpoints/snap50/metrics_test.json, "):
        run(cfg)
    cfg.runs = [str(tmp_path / "run" / "checkpoints" / "snap50")]
    assert "| snap50 | 90.0 |" in run(cfg)
    with pytest.raises(ValueError, match=r"config: runs must be given: python -m experiments.report runs=\.\.\."):
        run(OmegaConf.load("experiments/conf/report.yaml"))  # was omegaconf's MissingMandatoryValue


def report_cfg(tmp_path, *runs, **values):
    cfg = OmegaConf.load("experiments/conf/report.yaml")
    cfg.runs = [str(r) for r in runs]
    for key, value in values.items():
        cfg[key] = value
    return cfg


def test_report_keeps_an_earlier_report_unless_told(tmp_path):
    from experiments.report import run

    report_run(tmp_path / "BaseModel", fid=30.5)
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "report.html").write_text("an earlier report")
    with pytest.raises(FileExistsError, match="notes.md, .*report.html: already there; .*overwrite=true"):
        run(report_cfg(tmp_path, tmp_path / "BaseModel", out=str(tmp_path / "notes.md")))
    assert (tmp_path / "notes.md").read_text() == "my notes"
    assert (tmp_path / "report.html").read_text() == "an earlier report"
    run(report_cfg(tmp_path, tmp_path / "BaseModel", out=str(tmp_path / "notes.md"), overwrite=True))
    assert "| BaseModel | 30.5 |" in (tmp_path / "notes.md").read_text()


@pytest.mark.parametrize(
    "content, words",
    [
        ("[]", "a JSON list, not an object of figures"),
        ('{"fid": 1.0, "_skipped": "all of it"}', "its _skipped is a str"),
        ("{not json", "not JSON"),
        (None, "a FIFO"),
    ],
)
def test_report_names_a_metrics_file_it_cannot_use(tmp_path, content, words):
    """A FIFO in place of metrics_test.json blocked the report for ever; `[]` and a string `_skipped` were
    tracebacks."""
    import os

    from experiments.report import run

    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    file = tmp_path / "run" / "ckpt" / "metrics_test.json"
    os.mkfifo(file) if content is None else file.write_text(content)
    with pytest.raises(ValueError, match=words) as err:
        run(report_cfg(tmp_path, tmp_path / "run"))
    assert str(file) in str(err.value)


def test_report_labels_that_share_a_file_name_get_a_sheet_each(tmp_path):
    from experiments.figures import write_report

    for name, colour in (("one", (200, 0, 0)), ("two", (0, 0, 200))):
        (tmp_path / name / "samples").mkdir(parents=True)
        Image.new("RGB", (16, 32), colour).save(tmp_path / name / "samples" / "samples_0001.000kimg.png")
    page = write_report([("a b", tmp_path / "one"), ("a_b", tmp_path / "two")], "| m |\n| --- |\n", tmp_path / "r", "T")
    sheets = sorted((tmp_path / "r").glob("samples_*.png"))
    assert [p.name for p in sheets] == ["samples_a_b.png", "samples_a_b_2.png"]
    first, second = (tuple(np.asarray(Image.open(p).convert("RGB"))[-2, 2]) for p in sheets)  # inside the grid
    assert first == (200, 0, 0) and second == (0, 0, 200)  # row 2's grids are not row 1's
    assert "samples_a_b_2.png" in page.read_text()


@pytest.mark.parametrize(
    "override, words",
    [
        ("+data_overrides.eval_min_frames=abc", r"config: data_overrides.eval_min_frames: 'abc' is not of type"),
        ("+data_overrides.vad={mode: 9}", r"config: data_overrides.vad: .*'mode' was unexpected"),
        ("+data_overrides.vad={vad_mode: 9}", r"config: data_overrides.vad.vad_mode: 9 is not one of \[0, 1, 2, 3\]"),
        ("+data_overrides.face_size=4", r"config: data_overrides.face_size: 4 is not one of"),
    ],
)
def test_data_overrides_are_checked_before_any_work(tmp_path, override, words):
    """Values under data_overrides went unchecked into the datamodule (tracebacks deep in it)."""
    import experiments.evaluate as command

    ckpt = smoke_checkpoint(tmp_path / "last.ckpt", {"corpus": {"identities": 12, "seed": 0}})
    with pytest.raises(ValueError, match=words):
        command.run(evaluate_cfg(ckpt, override))
    assert not list(tmp_path.glob("metrics_*"))


def test_features_other_than_the_models_are_refused_before_any_audio_is_read(tmp_path):
    """MFCC + deltas under data_overrides for a log-mel model: "audio must be [B, 64, T]" after the data was built."""
    import experiments.evaluate as command

    data = {"corpus": {"identities": 12, "seed": 0}, "corpus_dir": str(tmp_path / "c"), "cache_dir": str(tmp_path)}
    ckpt = smoke_checkpoint(tmp_path / "last.ckpt", data)
    with pytest.raises(ValueError, match="gives 39 features a frame, but this model's encoder was trained on 64"):
        command.run(evaluate_cfg(ckpt, "+data_overrides.features={kind: mfcc}"))
    assert not (tmp_path / "c").exists()  # refused before the corpus was built


def test_evaluate_into_a_folder_it_cannot_write_is_refused_before_the_evaluation(tmp_path, monkeypatch):
    """A checkpoint in a read-only folder: the whole evaluation ran, then its figures were lost."""
    import os

    import experiments.evaluate as command

    ckpt = smoke_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.setattr(command, "build_datamodule", lambda *a, **k: pytest.fail("the evaluation started"))
    readable = os.access  # a read-only folder, by os.access (the tests may run as root, who writes anywhere)
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and readable(path, mode))
    with pytest.raises(PermissionError, match=f"{tmp_path}: cannot write the metrics there; pass out=DIR"):
        command.run(evaluate_cfg(ckpt))


def test_an_interval_over_one_identity_is_not_drawn():
    """A split of one speaker gave zero-width intervals with no note: certainty where there is none."""
    from lightning_modules.metrics.intervals import bootstrap_ci

    score = lambda idx: float(idx.float().mean())  # noqa: E731
    assert all(v != v for v in bootstrap_ci(score, torch.zeros(5, dtype=torch.long)))  # NaN, NaN
    low, high = bootstrap_ci(score, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert low < high  # three identities: an interval


def test_the_wandb_table_leaves_the_encoder_as_it_was(monkeypatch):
    """The W&B table ran the encoder in training mode: its batch norm's running statistics moved with the table's
    batch, so `make run` (W&B + CSV) ended at fd_probe 6.86 and the same run with logger=csv at 4.66."""
    import sys
    import types

    from lightning_modules.metrics import callback
    from lightning_modules.voice2face import Voice2FaceGAN

    class Logger:  # stands in for WandbLogger: the table is all this test needs of it
        tables: list = []

        def log_table(self, **table):
            self.tables.append(table)

    monkeypatch.setattr(callback, "WandbLogger", Logger)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Image=lambda *a, **k: "image"))
    torch.manual_seed(0)
    model = Voice2FaceGAN(**{**SMOKE, "feature_dim": 4}).train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cb = callback.MetricsCallback(metrics_settings(callback={"split": "test", "table_rows": 3}))
    cb.log_table(types.SimpleNamespace(loggers=[Logger()]), model, StandInData(4, 8))
    assert Logger.tables and model.training  # logged, and handed back in training mode
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} moved"
