"""Metrics against hand-computed values, with small stand-in networks (no pretrained weights needed)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lightning_modules.metrics import (
    FID,
    MetricUnavailable,
    centroids,
    identity_cosine,
    path_length,
    quantize,
    retrieval_recall,
    trimmed_mean,
)
from lightning_modules.metrics.attributes import attribute_scores, r2_score, shuffled_score
from lightning_modules.metrics.ppl import pair_latents
from lightning_modules.metrics.probe import AttributeCodec, train_probe
from lightning_modules.metrics.weights import resolve_weights


class PixelFeatures(nn.Module):
    """Stand-in FID feature net: 5 fixed pixels of channel 0, as float (uint8 input, like Inception)."""

    num_features = 5

    def forward(self, x):
        return x[:, 0, 0, :5].float()


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_quantize_matches_nvlabs():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    assert quantize(x).tolist() == [0, 0, 64, 128, 255, 255, 255]
    assert quantize(x).dtype == torch.uint8


def test_fid_matches_scipy_on_known_features(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (60, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = (torch.randint(0, 200, (40, 3, 8, 8), generator=g) + 30).to(torch.uint8)
    expected = frechet_reference(real[:, 0, 0, :5].double().numpy(), fake[:, 0, 0, :5].double().numpy())
    fid = FID(PixelFeatures(), cache_dir=tmp_path)
    fid.set_real(lambda: real.split(16), key="test-a")
    assert fid.compute(fake.split(7)) == pytest.approx(expected, rel=1e-5)
    assert fid.compute([real]) == pytest.approx(0.0, abs=1e-6)  # generated statistics reset between calls

    # A second FID reads the cached real statistics instead of the images.
    def no_images():
        raise AssertionError("real statistics should come from the cache")

    cached = FID(PixelFeatures(), cache_dir=tmp_path)
    cached.set_real(no_images, key="test-a")
    assert cached.compute(fake.split(7)) == pytest.approx(expected, rel=1e-5)
    assert len(list(tmp_path.glob("fid_real_test-a_*.pt"))) == 1


def nvlabs_kid(gen: np.ndarray, real: np.ndarray) -> float:
    """NVlabs' kid50k written out for sets no larger than a subset: every subset is the whole set."""
    n, m = gen.shape[1], len(gen)
    a = (gen @ gen.T / n + 1) ** 3 + (real @ real.T / n + 1) ** 3
    b = (gen @ real.T / n + 1) ** 3
    return float(((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m)


def test_kid_beside_fid_uses_the_same_features_and_the_cache(tmp_path):
    from lightning_modules.metrics.families import fid_metric

    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = (torch.randint(0, 180, (50, 3, 8, 8), generator=g) + 40).to(torch.uint8)
    feats = lambda x: x[:, 0, 0, :5].double().numpy()  # noqa: E731  (PixelFeatures)
    fid = FID(PixelFeatures(), cache_dir=tmp_path)
    result = fid_metric(fid, fake, real, "test", batch_size=16)
    assert result["kid"] == pytest.approx(nvlabs_kid(feats(fake), feats(real)), rel=1e-6)
    assert result["fid"] == pytest.approx(frechet_reference(feats(real), feats(fake)), rel=1e-5)
    assert {k: result[k] for k in ("fid/n_gen", "fid/n_real", "kid/n_gen", "kid/n_real")} == dict.fromkeys(
        ("fid/n_gen", "fid/n_real", "kid/n_gen", "kid/n_real"), 50
    )
    cached = FID(PixelFeatures(), cache_dir=tmp_path)  # real features come back from the cache file
    cached.set_real(lambda: (_ for _ in ()).throw(AssertionError("cache not used")), key=fid.real_key)
    cached.compute([fake])
    assert cached.kid() == pytest.approx(result["kid"], rel=1e-9)


def test_an_fid_of_few_faces_comes_with_a_warning():
    from lightning_modules.metrics.families import FID_FLOOR, fid_note

    assert fid_note(FID_FLOOR) is None and "148 generated faces (< 2000)" in fid_note(148)


def test_the_evaluation_subset_is_balanced_over_identities():
    from lightning_modules.metrics.split import balanced_subset

    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    keep = balanced_subset(labels, 9, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [3, 3, 3] and torch.equal(keep, keep.sort().values)
    assert torch.equal(keep, balanced_subset(labels, 9, seed=0)) and not torch.equal(
        keep, balanced_subset(labels, 9, 1)
    )
    assert torch.bincount(labels[balanced_subset(labels, 15)]).tolist() == [5, 3, 5]  # identity 1 has only 3


@pytest.mark.parametrize("bad", [b"PK\x03\x04 cut short", "other shapes"])
def test_an_unusable_fid_cache_is_computed_again(tmp_path, bad):
    """A truncated cache file (a killed run) stopped every later evaluation with torch's PytorchStreamReader."""
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (60, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    fresh = FID(PixelFeatures())
    fresh.set_real(lambda: real.split(16), key="test-a")
    fid = FID(PixelFeatures(), cache_dir=tmp_path)
    file = fid.cache_file("test-a")
    if isinstance(bad, bytes):
        file.write_bytes(bad)
    else:
        torch.save({n: torch.zeros(2) for n in ("real_features_sum", "real_features_cov_sum")}, file)
    fid.set_real(lambda: real.split(16), key="test-a")
    assert fid.compute(fake.split(7)) == pytest.approx(fresh.compute(fake.split(7)), rel=1e-6)
    assert torch.load(file, weights_only=True)["real_features_sum"].shape == (5,)  # replaced by a good one
    assert [p.name for p in tmp_path.iterdir()] == [file.name]  # no temporary left


@pytest.mark.parametrize("name", ["inception", "vgg16", "facenet"])
@pytest.mark.parametrize("content", [b"PK\x03\x04 cut short", {"features.0.weight": torch.zeros(3)}])
@pytest.mark.integration
def test_unusable_metric_weights_make_the_metric_unavailable(tmp_path, name, content):
    """A truncated or foreign weights file was a RuntimeError traceback (PytorchStreamReader, load_state_dict)
    that named no file and stopped the evaluation; now that metric is skipped, naming the file."""
    from lightning_modules.metrics.identity import FaceNetEmbedder
    from lightning_modules.metrics.ppl import LPIPSDistance

    build = {"inception": lambda p: FID(None, weights_path=p), "vgg16": LPIPSDistance, "facenet": FaceNetEmbedder}
    path = tmp_path / f"{name}.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    words = "cannot be read as" if isinstance(content, bytes) else "not the .* weights"
    with pytest.raises(MetricUnavailable, match=rf"{path}: {words}"):
        build[name](str(path))


def test_a_weights_path_that_is_a_folder_says_so(tmp_path):
    from lightning_modules.metrics.weights import resolve_weights

    with pytest.raises(MetricUnavailable, match=rf"vgg16 weights: {tmp_path}: a folder, not a file; the weights_path"):
        resolve_weights("vgg16", tmp_path)  # was "does not exist"


def test_fid_rejects_float_images():
    fid = FID(PixelFeatures())
    with pytest.raises(ValueError, match="uint8"):
        fid.set_real(lambda: [torch.zeros(2, 3, 8, 8)], key="x")


def test_fid_without_weights_is_unavailable_with_reason(empty_hub, tmp_path):
    with pytest.raises(MetricUnavailable, match="weights-inception-2015-12-05"):
        FID(None, download=False)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        FID(None, weights_path=str(tmp_path / "missing.pth"))


def test_resolve_weights_prefers_configured_then_hub_cache(empty_hub, tmp_path):
    local = tmp_path / "vgg.pth"
    local.write_bytes(b"x")
    assert resolve_weights("vgg16", local) == local
    cached = empty_hub / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights("vgg16") == cached


class LinearG(nn.Module):
    """Stand-in StyleGAN: mapping z -> ws = (zA) repeated; synthesis ws -> img = reshape(ws[:, 0] B)."""

    def __init__(self, z_dim=6, w_dim=5, num_ws=4):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.z_dim, self.num_ws = z_dim, num_ws
        self.A = nn.Parameter(torch.randn(z_dim, w_dim, generator=g, dtype=torch.float64))
        self.B = nn.Parameter(torch.randn(w_dim, 3 * 2 * 2, generator=g, dtype=torch.float64))
        self.register_buffer("noise_const", torch.zeros(3))

    def mapping(self, z):
        return (z.double() @ self.A)[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        assert noise_mode == "const"
        return (ws[:, 0] @ self.B).reshape(-1, 3, 2, 2) + self.noise_const.sum()

    def forward(self, z, truncation_psi=1.0, noise_mode="const"):
        return self.synthesis(self.mapping(z), noise_mode=noise_mode)


def test_trimmed_mean_drops_the_outer_percentiles():
    d = np.concatenate([[1e6, -1e6], np.arange(1.0, 199.0)])  # 200 values, one outlier on each side
    assert trimmed_mean(d) == pytest.approx(np.arange(1.0, 199.0).mean())


def test_path_length_equals_hand_computed_value():
    G = LinearG()
    g = torch.Generator().manual_seed(3)
    sizes = [64, 64, 64, 58]  # 250 samples in batches of 64
    batches = [torch.randn(2 * n, G.z_dim, generator=g, dtype=torch.float64) for n in sizes]  # [z0s; z1s]
    feed = iter(batches)
    mse = lambda a, b: (a - b).square().mean(dim=(1, 2, 3))  # noqa: E731
    got = path_length(G, mse, num_samples=250, batch_size=64, epsilon=1e-4, latents=lambda n, rng: next(feed))
    # linear G: img(w0 + eps (w1 - w0)) - img(w0) = eps (z1 - z0) A B, so d = mean(((z1 - z0) A B)^2)
    z0 = torch.cat([b[:n] for b, n in zip(batches, sizes)])
    z1 = torch.cat([b[n:] for b, n in zip(batches, sizes)])
    d = (((z1 - z0) @ G.A @ G.B) ** 2).mean(1).detach().numpy()
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    assert 0 < ((d < lo) | (d > hi)).sum() < 10  # the trimming is exercised
    assert got == pytest.approx(d[(d >= lo) & (d <= hi)].mean(), rel=1e-3)  # float32 images: eps cancellation
    assert G.noise_const.abs().sum() == 0  # the caller's noise buffers are untouched


def unit(z):
    return z / z.norm(dim=1, keepdim=True)


def test_ppl_zend_equals_hand_computed_value():
    """z space: d = |G(slerp(z0, z1, eps)) - G(z0)|^2 / eps^2. For a linear G and unit latents (NVlabs' slerp),
    G(slerp) - G(z0) = eps * v A B + O(eps^2), v = omega / sin(omega) * (z1 - cos(omega) z0) the slerp's
    derivative at t = 0."""
    G = LinearG()
    g = torch.Generator().manual_seed(4)
    sizes = [64, 36]
    batches = [unit(torch.randn(2 * n, G.z_dim, generator=g, dtype=torch.float64)) for n in sizes]
    feed = iter(batches)
    mse = lambda a, b: (a - b).square().mean(dim=(1, 2, 3))  # noqa: E731
    got = path_length(G, mse, 100, 64, 1e-4, latents=lambda n, rng: next(feed), space="z")
    z0 = torch.cat([b[:n] for b, n in zip(batches, sizes)])
    z1 = torch.cat([b[n:] for b, n in zip(batches, sizes)])
    cos = (z0 * z1).sum(1, keepdim=True)
    omega = torch.acos(cos)
    v = omega / torch.sin(omega) * (z1 - cos * z0)
    d = ((v @ G.A @ G.B) ** 2).mean(1).detach().numpy()
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    assert got == pytest.approx(d[(d >= lo) & (d <= hi)].mean(), rel=2e-3)


@pytest.mark.parametrize("kind", ["dcgan", "stylegan2"])
def test_ppl_zend_of_real_generators_against_a_direct_loop(kind):
    """DCGAN (no W space) and StyleGAN2 in z space: path_length equals the formula written out here with
    NVlabs' slerp on unit latents; W space exists for StyleGAN2 only."""
    from lightning_modules.nets.baselines import DCGANGenerator
    from lightning_modules.nets.stylegan2 import Generator

    torch.manual_seed(0)
    if kind == "dcgan":
        G = DCGANGenerator(z_dim=8, img_resolution=8, channel_base=64, channel_max=16)
    else:
        G = Generator(
            z_dim=8,
            w_dim=8,
            img_resolution=8,
            mapping_layers=2,
            channel_base=64,
            channel_max=8,
            impl="torch",
            use_noise=False,
        )
    dtype = torch.float64 if kind == "dcgan" else torch.float32  # our StyleGAN2 synthesis runs in float32
    G = G.to(dtype).eval()
    pairs = unit(torch.randn(2 * 16, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    eps = 1e-2  # both sides take the same finite step, so a large one keeps float32 rounding out of the way
    mse = lambda a, b: (a - b).square().mean(dim=(1, 2, 3))  # noqa: E731
    got = path_length(G, mse, 16, 16, eps, latents=lambda n, rng: pairs.to(dtype), space="z")
    z0, z1 = pairs.chunk(2)
    cos = (z0 * z1).sum(1, keepdim=True)
    p = torch.acos(cos) * eps
    c = unit(z1 - cos * z0)
    zt = z0 * torch.cos(p) + c * torch.sin(p)  # NVlabs' slerp(z0, z1, eps)
    with torch.no_grad():
        img0, img1 = G(z0.to(dtype), noise_mode="const"), G(zt.to(dtype), noise_mode="const")
    d = mse(img0.double(), img1.double()).numpy() / eps**2
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    assert got == pytest.approx(d[(d >= lo) & (d <= hi)].mean(), rel=1e-3)
    assert got > 0
    if kind == "stylegan2":
        assert path_length(G, mse, 16, 16, eps, latents=lambda n, rng: pairs.to(dtype), space="w") > 0


def test_voice_pairs_are_two_different_utterances():
    pool = torch.arange(5, dtype=torch.float64)[:, None].repeat(1, 3)  # row i = (i, i, i)
    latents = pair_latents(pool, noise_dim=2)
    z = latents(400, torch.Generator().manual_seed(0))
    first, second = z[:200, 0], z[200:, 0]
    assert z.shape == (400, 5) and (first != second).all() and set(first.tolist()) == set(range(5))
    assert z[:, 3:].std() > 0.5  # the noise inputs are fresh N(0, 1)
    with pytest.raises(ValueError, match=">= 2 held-out utterances"):
        pair_latents(pool[:1])


def test_identity_cosine_hand_value():
    real = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    centers = centroids(real, labels, 2)  # id 0: mean of unit (1,0),(0,1) = (.5,.5); id 1: (1,0)
    assert torch.allclose(centers, torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    gen = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert identity_cosine(gen, torch.tensor([0, 1]), centers) == pytest.approx((2**-0.5 + 2**-0.5) / 2)
    with pytest.raises(ValueError, match="no real faces"):
        centroids(real, labels, 3)


def test_retrieval_on_constructed_cases():
    C = 20
    centers = torch.eye(C)
    labels = torch.arange(C).repeat(5)
    perfect, used = retrieval_recall(centers[labels], labels, centers, gallery_size=10)
    assert perfect == {1: 1.0, 5: 1.0, 10: 1.0} and used == 10
    # Every other identity scores higher than the true one: the true one is last in any gallery.
    worst = torch.ones(C, C) - 2 * torch.eye(C)
    assert retrieval_recall(worst[labels], labels, centers, 10)[0] == {1: 0.0, 5: 0.0, 10: 1.0}
    recall, used = retrieval_recall(worst[labels], labels, centers, 100)
    assert used == C and recall == {1: 0.0, 5: 0.0, 10: 0.0}
    # Exactly two identities beat the true one; gallery = all identities.
    third = 0.5 * torch.eye(C) + torch.roll(torch.eye(C), 1, 1) + torch.roll(torch.eye(C), 2, 1)
    assert retrieval_recall(third[labels], labels, centers, C, ks=(1, 2, 3))[0] == {1: 0.0, 2: 0.0, 3: 1.0}
    # One rival beats the true identity: Recall@1 = P(rival not drawn) = 1 - (g - 1) / (C - 1).
    second = 0.5 * torch.eye(C) + torch.roll(torch.eye(C), 1, 1)
    r1 = retrieval_recall(second[labels], labels, centers, 10, ks=(1,), repeats=100, seed=1)[0][1]
    assert r1 == pytest.approx(1 - 9 / 19, abs=0.03)


def test_r2_hand_value():
    assert r2_score(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(1 - 1 / 2)


def coloured_faces(colours, n=4, seed=0):
    """Faces of flat colour per identity (+ a little noise): the attribute 'tint' is visible."""
    g = torch.Generator().manual_seed(seed)
    palette = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    out = {}
    for name, (tint, level) in colours.items():
        base = torch.tensor(palette[tint], dtype=torch.float32)[:, None, None] * level
        out[name] = (base + 10 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)
    return out


@pytest.mark.integration
def test_attribute_probe_recovers_visible_traits():
    train = {f"t{i}": ("red" if i % 3 else "blue", 0.4 + 0.1 * i) for i in range(6)}
    test = {"a": ("red", 0.5), "b": ("blue", 0.9), "c": ("blue", 0.6)}
    attrs = {n: {"tint": t, "level": lv} for n, (t, lv) in {**train, **test}.items()}
    kinds = {"tint": "categorical", "level": "continuous"}
    probe, codec = train_probe(coloured_faces(train), attrs, kinds, steps=150, seed=0)
    assert codec.vocab["tint"] == ["blue", "red"] and codec.vocab["tint"][codec.majority["tint"]] == "red"
    real = coloured_faces(test, seed=1)
    names = [n for n in test for _ in range(4)]
    faces = torch.cat([real[n] for n in test]).float() / 127.5 - 1
    swapped = coloured_faces({n: ("red" if t == "blue" else "blue", lv) for n, (t, lv) in test.items()}, seed=2)
    wrong = torch.cat([swapped[n] for n in test]).float() / 127.5 - 1
    same = attribute_scores(
        probe, codec, faces, names, faces, names, attrs, train_names=list(train), group_by=("tint",)
    )
    assert same["attr/tint"] == same["attr/tint/oracle"] == 1.0
    assert same["attr/tint/group"] == 1.0  # grouped by the trait itself, the group's mode is always right
    assert same["attr/tint/chance"] == pytest.approx(1 / 3)  # majority 'red' is right for 1 of 3 identities
    assert same["attr/level/oracle"] > 0.5
    y = np.array([0.5, 0.9, 0.6])  # always predicting the train mean 0.65 (0.4 .. 0.9):
    assert same["attr/level/chance"] == pytest.approx(1 - ((y - 0.65) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert attribute_scores(probe, codec, wrong, names, faces, names, attrs)["attr/tint"] == 0.0
    # Identities permuted: own-label matches average 2/3 + 2/3 + 1/3 over the three (blue, blue, red) ids.
    assert same["attr/tint/shuffled"] == pytest.approx(5 / 9, abs=0.05)


def test_group_bound_is_the_train_mode_or_mean_of_the_speakers_group():
    from lightning_modules.metrics.attributes import group_bound

    attrs = {
        "t1": {"sex": "f", "hair": 2, "len": 0.8},
        "t2": {"sex": "f", "hair": 2, "len": 0.6},
        "t3": {"sex": "f", "hair": 1, "len": 0.7},
        "t4": {"sex": "m", "hair": 0, "len": 0.2},
        "a": {"sex": "f", "hair": 1, "len": 0.9},
        "b": {"sex": "m", "hair": 0, "len": 0.1},
    }
    train = ["t1", "t2", "t3", "t4"]
    hair = torch.tensor([attrs[n]["hair"] for n in train])
    guess = group_bound("categorical", hair, ["a", "a", "b"], hair, train, attrs, ("sex",))
    assert guess.tolist() == [2, 2, 0]  # the mode of the train women, of the train man
    length = torch.tensor([attrs[n]["len"] for n in train])
    guess = group_bound("continuous", length, ["a", "b"], length, train, attrs, ("sex",))
    assert guess.tolist() == pytest.approx([0.7, 0.2])
    nobody = {**attrs, "c": {"sex": "x", "hair": 0, "len": 0.0}}  # a group without train identities: all train
    assert group_bound("continuous", length, ["c"], length, train, nobody, ("sex",)).tolist() == pytest.approx([0.575])


def test_shuffled_score_sees_through_a_constant_generator():
    names = ["a", "a", "b", "b", "c", "c", "d", "d"]
    target = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1])
    constant = torch.ones(8, dtype=torch.long)  # every face looks the same: right for the majority by luck
    assert shuffled_score("categorical", constant, target, names) == pytest.approx(3 / 4)
    assert shuffled_score("categorical", target, target, names) < 1.0


def test_codec_rejects_unknown_kind():
    with pytest.raises(ValueError, match="categorical or continuous"):
        AttributeCodec.fit({"x": "ordinal"}, [{"x": 1}])


@pytest.mark.integration
def test_lpips_reads_a_local_vgg16_file(tmp_path, empty_hub):
    import torchvision

    from lightning_modules.metrics import LPIPSDistance

    with pytest.raises(MetricUnavailable, match="vgg16-397923af.pth"):
        LPIPSDistance()
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "vgg16.pth")
    lpips = LPIPSDistance(str(tmp_path / "vgg16.pth"))
    assert torch.equal(lpips.net.net.slice5[-2].weight, features["28.weight"])  # conv5_3 from the file
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = lpips(x, x.flip(-1))
    assert d.shape == (2,) and (d > 0).all() and lpips(x, x).abs().max() < 1e-6


@pytest.mark.integration
def test_fid_reads_a_local_inception_file(tmp_path, monkeypatch):
    """The 2048-d Inception path end to end with a local weights file (random weights stand in)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:  # build the network once without any weights, to write a file
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr(torch, "load", lambda *a, **k: {})
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    fid = FID(None, weights_path=str(tmp_path / "inception.pth"))
    assert fid.metric.inception.use_antialias is False  # TF1-style resize, as torch-fidelity
    assert torch.equal(fid.metric.inception.fc.weight, net.fc.weight)
    g = torch.Generator().manual_seed(0)
    imgs = quantize(torch.rand(6, 3, 64, 64, generator=g) * 2 - 1)
    fid.set_real(lambda: [imgs[:3]], key="x")
    assert fid.compute([imgs[3:]]) >= 0


def test_constant_continuous_attribute_is_skipped_with_reason():
    train = {f"t{i}": ("red" if i % 2 else "blue", 0.1 * i) for i in range(4)}
    attrs = {n: {"tint": t, "level": lv} for n, (t, lv) in train.items()}
    attrs["x"] = {"tint": "red", "level": 0.5}
    probe, codec = train_probe(coloured_faces(train), attrs, {"tint": "categorical", "level": "continuous"}, 5)
    faces = coloured_faces({"x": ("red", 0.5)})["x"].float() / 127.5 - 1
    skipped = {}
    scores = attribute_scores(probe, codec, faces, ["x"] * 4, faces, ["x"] * 4, attrs, skipped)
    assert "attr/level" not in scores and "R² is undefined" in skipped["attr/level"]
    assert "attr/tint" in scores


def test_the_ridge_read_recovers_a_linear_map_and_ignores_the_embeddings_scale():
    from lightning_modules.metrics.voice import ridge_fit

    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(500, 8, generator=g), torch.randn(8, 2, generator=g)
    y = x @ weight + 3.0
    for scale in (1.0, 1000.0):  # the penalty is relative to the embeddings' own spread
        pred = ridge_fit(x * scale, y, 1e-6)(x[:5] * scale)
        torch.testing.assert_close(pred, (x[:5] @ weight + 3.0).double(), atol=1e-4, rtol=1e-4)


def test_voice_scores_read_a_trait_the_embedding_carries_and_not_one_it_lacks():
    """Embeddings that carry sex and skin tone (plus noise) read them far above shuffled on unseen speakers;
    embeddings of pure noise read them no better than shuffled."""
    from lightning_modules.metrics.probe import AttributeCodec
    from lightning_modules.metrics.voice import voice_scores

    g = torch.Generator().manual_seed(0)
    people = {f"p{i}": {"sex": "mf"[i % 2], "skin_tone": float(torch.rand([], generator=g))} for i in range(60)}
    codec = AttributeCodec.fit({"sex": "categorical", "skin_tone": "continuous"}, list(people.values()))

    def utterances(names, carry: bool):
        rows = [n for n in names for _ in range(4)]
        traits = torch.tensor([[people[n]["sex"] == "f", people[n]["skin_tone"]] for n in rows], dtype=torch.float)
        noise = torch.randn(len(rows), 16, generator=g)
        return (noise * 0.05 + torch.cat([traits, torch.zeros(len(rows), 14)], 1) if carry else noise), rows

    train, held = [f"p{i}" for i in range(40)], [f"p{i}" for i in range(40, 60)]
    for carry in (True, False):
        out = voice_scores(codec, utterances(train, carry), utterances(held, carry), people, 0.01, 200)
        assert set(out) >= {"voice_attr/sex", "voice_attr/sex/ci95", "voice_attr/skin_tone/shuffled"}
        if carry:
            assert out["voice_attr/sex"] == 1.0 and out["voice_attr/skin_tone"] > 0.9
            assert out["voice_attr/skin_tone/ci95"][0] > out["voice_attr/skin_tone/shuffled"]
        else:
            assert out["voice_attr/sex"] < 0.75 and out["voice_attr/skin_tone"] < 0.2


def test_voice_scores_leave_a_class_the_codec_never_saw_out_of_the_fit():
    """A train speaker whose category the probe's codec does not know (-1) was fitted as class 0: here that would
    teach class 0 = 'b' voices, and the held-out 'b' speakers would be read as 'a'."""
    from lightning_modules.metrics.probe import AttributeCodec
    from lightning_modules.metrics.voice import voice_scores

    codec = AttributeCodec.fit({"kind": "categorical"}, [{"kind": "a"}, {"kind": "b"}])
    people = {"a0": "a", "a1": "a", "b0": "b", "b1": "b", "x": "a", "y": "b"}
    people.update({f"c{i}": "c" for i in range(4)})
    attributes = {n: {"kind": k} for n, k in people.items()}
    voice = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.0, 1.0]}  # the unknown "c" sounds as "b" does
    train = ["a0", "a1", "b0", "b1", "c0", "c1", "c2", "c3"]
    x_train = torch.tensor([voice[people[n]] for n in train])
    x = torch.tensor([voice["a"], voice["b"]])
    out = voice_scores(codec, (x_train, train), (x, ["x", "y"]), attributes, 1e-3, 0)
    assert out["voice_attr/kind"] == 1.0
