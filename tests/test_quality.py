"""fd_probe / kid_probe: the Fréchet distance against scipy, KID's sign, the real-vs-real protocol, and that the
probe of the embedded corpus tells real faces from blurred faces, colour blobs and faces that all look alike."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from lightning_modules.metrics.quality import (
    frechet_distance,
    halves,
    kid,
    probe_quality,
    speaker_mean_faces,
    speaker_spread,
)


def test_frechet_distance_matches_scipy_and_survives_a_degenerate_set():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(150, 8, generator=g, dtype=torch.float64) * 2 + 1
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy.linalg.sqrtm(ca @ cb).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca) + np.trace(cb) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    same = a[:1].expand(50, -1)  # every "face" alike: zero covariance
    assert frechet_distance(same, b) == pytest.approx(((a[0] - b.mean(0)) ** 2).sum().item() + np.trace(cb), rel=1e-8)


def test_kid_is_near_zero_for_one_distribution_and_positive_apart():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 300, 16, generator=g, dtype=torch.float64)
    assert abs(kid(x, y)) < 0.05 and kid(x, y + 1.0) > 0.5


def test_halves_split_every_identity():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    first, second = halves(labels)
    assert set(first.tolist()).isdisjoint(second.tolist()) and len(first) + len(second) == len(labels)
    assert set(labels[first].tolist()) == set(labels[second].tolist()) == {0, 1, 2}


@pytest.fixture(scope="module", params=["retrain", "shipped"])
def corpus_probe(tmp_path_factory, request):
    """A probe trained on the train-split faces of a small embedded corpus (or the shipped one, trained on the
    default corpus' train split: none of these test faces), and the test split's faces."""
    from conftest import probe_settings

    from datamodules.faces import normalize
    from datamodules.voxvgg import VoxVGGDataModule
    from lightning_modules.metrics.probe import probe_for
    from lightning_modules.metrics.split import real_faces

    root = tmp_path_factory.mktemp("quality")
    dm = VoxVGGDataModule(
        corpus={"identities": 32, "seed": 0},
        corpus_dir=str(root / "corpus"),
        cache_dir=str(root / "cache"),
        detector="file",
        prepare_workers=1,
    )
    dm.prepare_data()
    probe = probe_for(dm, probe_settings(weights=request.param, steps=300))[0]
    real_u8, labels, _ = real_faces(dm, "test")
    return probe, normalize(real_u8), labels


@pytest.mark.integration
def test_the_probe_tells_faces_from_blobs(corpus_probe):
    probe, real, labels = corpus_probe
    feats = lambda x: probe.predict(x)[0]  # noqa: E731
    reference = feats(real)
    half = halves(labels)[1]
    real_like = probe_quality(feats(real[half]), reference, labels)
    floor = real_like["fd_probe/real"]
    assert real_like["fd_probe"] < 3 * floor  # real faces of the other half sit at the floor
    stand_ins = {
        "blurred": F.interpolate(F.interpolate(real, scale_factor=0.25, mode="area"), scale_factor=4, mode="bilinear"),
        "colour blobs": F.interpolate(
            F.interpolate(real, scale_factor=0.125, mode="area"), scale_factor=8, mode="bilinear"
        ),
        "all alike": real[:1].expand_as(real),
    }
    fd = {}
    for name, fake in stand_ins.items():
        q = probe_quality(feats(fake), reference, labels)
        fd[name] = q["fd_probe"]
        assert q["kid_probe"] > q["kid_probe/real"] + 0.05, name
    # the distance grows with the damage: real < 4x blur < 8x blur, and the blur alone is well off the floor
    # (the 4x blur measured 3.8-8x the floor across corpora and thread counts, so 2x leaves room)
    assert real_like["fd_probe"] < fd["blurred"] < fd["colour blobs"], fd
    assert fd["blurred"] > 2 * floor and fd["colour blobs"] > 4 * floor and fd["all alike"] > 4 * floor, fd
    # each speaker's mean face keeps who the speaker is but loses detail and variety: off the floor, short of
    # one face for everyone
    mean_faces = speaker_mean_faces(real, labels, labels)
    fd["speaker mean"] = probe_quality(feats(mean_faces), reference, labels)["fd_probe"]
    assert 2 * floor < fd["speaker mean"] < fd["all alike"], fd


def test_speaker_mean_faces_average_the_held_out_half():
    real = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    labels = torch.tensor([0, 0, 0, 1, 1])  # halves: R1 = faces 0, 2, 3; R2 = faces 1, 4
    means = speaker_mean_faces(real, labels, torch.tensor([1, 0, 1]))
    assert means.shape == (3, 3, 2, 2)
    assert means[:, 0, 0, 0].tolist() == [4.0, 1.0, 4.0]
    lone = speaker_mean_faces(real[:4], torch.tensor([0, 0, 0, 1]), torch.tensor([1]))  # identity 1: R1 only
    assert lone[0, 0, 0, 0] == 3.0


def test_speaker_spread_tells_faces_drawn_alike_across_speakers_from_alike_within_one():
    """Real faces against themselves score 1 and 1; each speaker's mean repeated keeps the between share and has
    no within; faces pulled halfway to the overall mean keep a quarter of both (variance scales with the square)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 6
    centres = torch.randn(6, 8, generator=g) * 3
    real = centres[labels] + torch.randn(60, 8, generator=g)
    same = speaker_spread(real, labels, real, labels)
    assert same == pytest.approx({"probe_spread/between": 1.0, "probe_spread/within": 1.0})
    means = torch.stack([real[labels == i].mean(0) for i in range(6)])
    collapsed = speaker_spread(means[labels], labels, real, labels)
    assert collapsed == pytest.approx({"probe_spread/between": 1.0, "probe_spread/within": 0.0}, abs=1e-6)
    shrunk = speaker_spread(real.mean(0) + 0.5 * (real - real.mean(0)), labels, real, labels)
    assert shrunk == pytest.approx({"probe_spread/between": 0.25, "probe_spread/within": 0.25})
    # generated faces of other counts per speaker (utterances, not photographs) are scored on their own labels
    fewer = speaker_spread(real[:30], labels[:30], real, labels)
    assert 0.5 < fewer["probe_spread/between"] < 1.5
