"""The shipped voice prior (lightning_modules/weights/voice_prior_128.safetensors, `make voice-prior`): a file of data
only, the very encoder make run builds, and where make run's stage 1 starts."""

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from lightning_modules import weights
from lightning_modules.encoder_pretrain import EncoderPretrain, load_encoder_weights
from lightning_modules.io.build import build_network
from lightning_modules.io.voice_encoder import HEAD, read_encoder_state

NAME = "voice_prior_128"


def test_the_shipped_voice_prior_is_make_runs_encoder(tmp_path):
    """Its recorded config is prior_cpu's encoder and it holds no speaker head; make run's encoder is built from
    exactly its weights, and a stage 1 on other speakers can start from them with a fresh head of its own."""
    state, about = read_encoder_state(NAME)
    cfg = compose_train(["+exp=prior_cpu"], tmp_path)
    encoder_cfg = OmegaConf.to_container(cfg.model.encoder, resolve=True)
    assert about == {"encoder_config": encoder_cfg, "feature_dim": 64}
    assert not any(k.startswith(HEAD) for k in state)
    assert cfg.model.encoder_ckpt == NAME and cfg.get("pretrain_encoder") is None
    gan_encoder = build_network(encoder_cfg, "model.encoder", in_features=64)
    load_encoder_weights(gan_encoder, cfg.model.encoder_ckpt)
    stage1 = EncoderPretrain(encoder=encoder_cfg, num_classes=75, feature_dim=64, init=NAME)
    assert stage1.encoder.state_dict()["classifier.weight"].shape == (75, 128)
    for key, value in state.items():
        torch.testing.assert_close(gan_encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(stage1.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_the_shipped_voice_prior_embeds_voices():
    """128-d embeddings, finite, that tell two different sounds apart and one sound from itself cropped later."""
    encoder = build_network(read_encoder_state(NAME)[1]["encoder_config"], "model.encoder", in_features=64).eval()
    load_encoder_weights(encoder, NAME)
    g = torch.Generator().manual_seed(0)
    low = torch.randn(1, 64, 400, generator=g) + torch.linspace(2, -2, 64)[None, :, None]
    high = torch.randn(1, 64, 400, generator=g) + torch.linspace(-2, 2, 64)[None, :, None]
    with torch.no_grad():
        emb = torch.cat([encoder(clip) for clip in (low, high, low[:, :, 40:])])
    assert emb.shape == (3, 128) and torch.isfinite(emb).all()
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[2], dim=0) > cos(emb[0], emb[1], dim=0)


def test_a_replaced_voice_prior_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "SUMS", tmp_path / "SHA256SUMS")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  voice_prior_128.safetensors\n")
    with pytest.raises(ValueError, match="voice_prior_128.safetensors: SHA-256 .* is not the recorded"):
        read_encoder_state(NAME)
