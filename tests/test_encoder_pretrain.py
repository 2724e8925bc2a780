"""EncoderPretrain: the paper's SGD + cosine cyclic recipe, speaker classification, encoder.pt hand-off."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import quiet_trainer
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.encoder_pretrain import EncoderPretrain, load_encoder_weights
from lightning_modules.io.build import register_network

FEAT, SPEAKERS = 6, 3


class TinyEncoder(nn.Module):
    def __init__(self, in_features=FEAT, embed_dim=8, num_classes=0):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(in_features, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None  # AudioEncoder's name

    def forward(self, feats, lengths=None):
        return self.proj(feats.mean(2))

    def classify(self, emb):
        return self.classifier(emb)


register_network(f"{__name__}.TinyEncoder")  # the tests' own encoder class, allowed in code


def make(**kwargs):
    return EncoderPretrain(
        encoder={"_target_": f"{__name__}.TinyEncoder", "embed_dim": 8},
        num_classes=SPEAKERS,
        feature_dim=FEAT,
        **kwargs,
    )


def speaker_batches(n=96):
    g = torch.Generator().manual_seed(0)
    label = torch.arange(n) % SPEAKERS
    audio = torch.randn(n, FEAT, 10, generator=g) * 0.5 + 2.0 * nn.functional.one_hot(label, FEAT)[:, :, None]
    ds = TensorDataset(audio, label)
    return DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        generator=g,
        collate_fn=lambda items: {
            "audio": torch.stack([a for a, _ in items]),
            "label": torch.stack([y for _, y in items]),
        },
    )


def test_sgd_recipe_and_cosine_cycles():
    model = make(cycle_steps=4)
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and cfg["lr_scheduler"]["interval"] == "step"
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 1e-4)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * (1 + math.cos(math.pi * (i % 4) / 4)) / 2 for i in range(9)]
    assert lrs == pytest.approx(expected)  # restarts at 4 and 8


def test_learns_speakers_and_writes_encoder_file(tmp_path):
    torch.manual_seed(0)
    model = make(lr=0.1)
    trainer = quiet_trainer(tmp_path, max_epochs=8)
    trainer.fit(model, speaker_batches())
    assert trainer.callback_metrics["train/acc"] > 0.9
    ckpt = torch.load(tmp_path / "encoder.pt", weights_only=True)
    assert ckpt["feature_dim"] == FEAT and ckpt["encoder_config"]["embed_dim"] == 8
    target = TinyEncoder(num_classes=0)  # the GAN's encoder has no speaker head: those entries are skipped
    load_encoder_weights(target, tmp_path / "encoder.pt")
    torch.testing.assert_close(target.proj.weight, model.encoder.proj.weight)


def test_bad_input_raises(tmp_path):
    with pytest.raises(ValueError, match=">= 2 speakers"):
        EncoderPretrain(encoder={"_target_": f"{__name__}.TinyEncoder"}, num_classes=1, feature_dim=FEAT)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an encoder checkpoint"):
        load_encoder_weights(TinyEncoder(), tmp_path / "other.pt")
    torch.save({"encoder": TinyEncoder(embed_dim=4).state_dict()}, tmp_path / "narrow.pt")
    with pytest.raises(
        ValueError,
        match=r"narrow.pt: encoder weights do not fit .* 2 of other shapes .*proj.bias "
        r"\[4\] \(expected \[8\]\).*same encoder config",
    ):
        load_encoder_weights(TinyEncoder(), tmp_path / "narrow.pt")


class Speakers(LightningDataModule):
    """speaker_batches with the metadata a datamodule gives: the training speakers and their traits."""

    def __init__(self, info):
        super().__init__()
        self.info = info

    def identities(self, split):
        return ["s0", "s1", "s2"]

    def speaker_info(self):
        return self.info

    def train_dataloader(self):
        return speaker_batches()


def test_an_aux_head_learns_the_speakers_trait_and_stays_out_of_the_encoder_file(tmp_path):
    torch.manual_seed(0)
    model = make(lr=0.1, aux={"nationality": 0.5})
    info = {"s0": {"nationality": "UK"}, "s1": {"nationality": "Kenya"}, "s2": {"nationality": "UK"}}
    trainer = quiet_trainer(tmp_path, max_epochs=8)
    trainer.fit(model, datamodule=Speakers(info))
    assert model.aux_nationality.tolist() == [1, 0, 1]  # sorted classes: Kenya, UK
    assert model.aux_heads["nationality"].out_features == 2
    assert trainer.callback_metrics["train/aux_nationality"] < 0.1
    assert not any(k.startswith("aux") for k in torch.load(tmp_path / "encoder.pt", weights_only=True)["encoder"])
    with pytest.raises(ValueError, match="aux trait 'nationality' is not in the data's speaker metadata of 1 .* s1"):
        quiet_trainer(tmp_path / "b", max_epochs=1).fit(
            make(aux={"nationality": 1.0}), datamodule=Speakers({**info, "s1": {"sex": "f"}})
        )


def test_the_shared_file_and_a_start_from_another_corpus_encoder(tmp_path):
    """encoder.safetensors beside encoder.pt: the same encoder without its speaker head, with the config that builds
    it; `init` starts a stage 1 of other speakers from it, the file's head left out and the new one fresh."""
    from safetensors import safe_open

    torch.manual_seed(0)
    model = make(lr=0.1)
    quiet_trainer(tmp_path, max_epochs=2).fit(model, speaker_batches())
    shared = tmp_path / "encoder.safetensors"
    with safe_open(shared, framework="pt") as f:
        assert sorted(f.keys()) == ["proj.bias", "proj.weight"]  # no classifier: another corpus' speakers
        assert f.metadata()["format"] == "voice2face.audio_encoder" and f.metadata()["feature_dim"] == str(FEAT)
    target = TinyEncoder()
    load_encoder_weights(target, shared)
    torch.testing.assert_close(target.proj.weight, model.encoder.proj.weight)

    torch.manual_seed(1)
    fresh = EncoderPretrain(
        encoder={"_target_": f"{__name__}.TinyEncoder", "embed_dim": 8}, num_classes=5, feature_dim=FEAT
    )
    torch.manual_seed(1)
    started = EncoderPretrain(
        encoder={"_target_": f"{__name__}.TinyEncoder", "embed_dim": 8},
        num_classes=5,
        feature_dim=FEAT,
        init=str(shared),
    )
    torch.testing.assert_close(started.encoder.proj.weight, model.encoder.proj.weight)
    torch.testing.assert_close(started.encoder.classifier.weight, fresh.encoder.classifier.weight)
    narrow = TinyEncoder()
    narrow.in_features = 39  # MFCC + deltas against the file's 6 bands: the stem would take them silently
    with pytest.raises(ValueError, match="encoder.safetensors: an encoder of 6 feature bands, .* have 39"):
        load_encoder_weights(narrow, shared)
    with pytest.raises(ValueError, match="encoder.pt: encoder weights do not fit .*classifier.weight"):
        load_encoder_weights(TinyEncoder(num_classes=5), tmp_path / "encoder.pt")  # 3 speakers' head, kept: refused


def test_a_safetensors_file_that_is_no_encoder_is_refused_by_name(tmp_path):
    """model.encoder_ckpt or pretrain_encoder.model.init naming another safetensors file, one without the encoder's
    config, or a cut one: each error names the file and what it is; no file is changed."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "probe.safetensors", metadata={"format": "face_probe"})
    save_file({"w": torch.zeros(2)}, tmp_path / "bare.safetensors", metadata={"format": "voice2face.audio_encoder"})
    data = (tmp_path / "probe.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 4])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name, problem in (
        ("probe", "a safetensors file, but not an audio encoder"),
        ("bare", "an audio encoder file whose metadata lacks .*encoder_config"),
        ("cut", "cannot be read as safetensors"),
    ):
        with pytest.raises(ValueError, match=f"{name}.safetensors: {problem}"):
            load_encoder_weights(TinyEncoder(), tmp_path / f"{name}.safetensors")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_every_rank_waits_at_a_barrier_until_rank_0_has_written_the_encoder_file(tmp_path):
    seen = []

    class Strategy:  # records, at each barrier, whether the file is there yet
        def barrier(self, name=None):
            seen.append((rank, (tmp_path / f"rank{rank}" / "encoder.pt").is_file()))

    for rank in (0, 1):
        model = make()
        model.trainer = SimpleNamespace(
            is_global_zero=rank == 0, default_root_dir=str(tmp_path / f"rank{rank}"), strategy=Strategy()
        )
        model.on_train_end()
    assert seen == [(0, True), (1, False)]  # rank 0 writes before the barrier; rank 1 writes nothing, and waits
