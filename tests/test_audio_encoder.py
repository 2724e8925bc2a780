"""SE-Mish ResNet18 audio encoder: layout, switches, padding-independent pooling, speaker head."""

import pytest
import torch
from torch import nn

from lightning_modules.nets.audio_encoder import AudioEncoder, BasicBlock, SqueezeExcitation

SMALL = dict(in_features=16, embed_dim=32, widths=(8, 16, 16, 32), se_reduction=4)  # ResNet18 depth, CPU-sized widths


def test_resnet18_layout_with_se_and_mish():
    enc = AudioEncoder()
    blocks = [m for m in enc.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and [b.conv2.out_channels for b in blocks] == [
        64,
        64,
        128,
        128,
        256,
        256,
        512,
        512,
    ]
    assert [b.stride for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert all(isinstance(b.se, SqueezeExcitation) and isinstance(b.act, nn.Mish) for b in blocks)
    assert blocks[-1].se.fc1.out_features == 512 // 16
    assert enc.fc.out_features == 512


def test_switches_remove_se_and_swap_the_activation():
    plain = AudioEncoder(**SMALL, se=False, act="relu")
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())
    assert not any(isinstance(m, nn.Mish) for m in plain.modules())
    assert any(isinstance(m, nn.ReLU) for m in plain.modules())
    full = AudioEncoder(**SMALL)
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match="act must be"):
        AudioEncoder(act="gelu")


def test_se_rescales_channels_by_a_sigmoid_gate():
    se = SqueezeExcitation(32, reduction=16)
    assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (32, 2, 32)
    x = torch.randn(2, 32, 4, 6)
    mask = torch.ones(2, 1, 1, 6)
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean(dim=(2, 3))))))
    torch.testing.assert_close(se(x, mask), x * gate[:, :, None, None])


@pytest.mark.parametrize("stem_stride,stem_pool", [(1, False), (2, False), (2, True)])
def test_padding_is_ignored(stem_stride, stem_pool):
    torch.manual_seed(0)
    enc = AudioEncoder(**SMALL, stem_stride=stem_stride, stem_pool=stem_pool).eval()
    with torch.no_grad():  # every stem activation negative: a zero from the padding would win a max-pool
        enc.stem[1].bias.fill_(-3.0)
    short, long = torch.randn(1, 16, 37), torch.randn(1, 16, 60)
    padded = torch.cat([torch.cat([short, 5 * torch.randn(1, 16, 23)], dim=2), long])
    emb = enc(padded, torch.tensor([37, 60]))
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb[0], enc(short)[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(emb[1], enc(long)[0], atol=1e-6, rtol=1e-5)


def test_speaker_head_and_gradients():
    torch.manual_seed(0)
    enc = AudioEncoder(**SMALL, num_classes=7)
    feats = torch.randn(3, 16, 40)
    logits = enc.classify(enc(feats, torch.tensor([40, 30, 12])))
    assert logits.shape == (3, 7)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    with pytest.raises(RuntimeError, match="num_classes"):
        AudioEncoder(**SMALL).classify(torch.randn(1, 32))


def test_bad_input_is_named():
    enc = AudioEncoder(**SMALL)
    with pytest.raises(ValueError, match=r"features \[B, 16, T\]"):
        enc(torch.randn(2, 20, 30))
    with pytest.raises(ValueError, match="lengths"):
        enc(torch.randn(2, 16, 30), torch.tensor([31, 5]))
