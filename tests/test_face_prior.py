"""The face prior: its training set (other people, the corpus' crops), its trainer (NVlabs' phases, exact resume),
its file (NVlabs' state-dict layout, G and D, read back by load_pretrained) and the file shipped with the package."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
import torch

from datamodules.faces import FaceAligner, normalize
from datamodules.synthetic.corpus import _build_identity
from datamodules.synthetic.face_set import _identity_faces, face_set_people, render_face_set
from datamodules.synthetic.traits import sample_identities
from lightning_modules import weights
from lightning_modules.face_prior import FacePriorTrainer
from lightning_modules.io.exporters import export_face_prior
from lightning_modules.io.legacy import load_pretrained
from lightning_modules.nets.stylegan2 import Discriminator


def _traits(people) -> set:
    return {tuple(sorted(p.traits.items())) for p in people}


@pytest.mark.integration
def test_face_set_holds_no_corpus_identity():
    _, labels = render_face_set(6, seed=1000, size=16, workers=1)
    prior = face_set_people(6, seed=1000)
    assert _traits(prior) == _traits(p for p in sample_identities(6, 1000 * 10_000) if p.has_face)  # the seed rule
    assert len(np.unique(labels)) == len(prior)
    assert not _traits(sample_identities(120, 0)) & _traits(prior)


def test_the_curve_scores_people_in_neither_the_face_set_nor_the_corpus():
    """The curve's default reference is the renderer's people of a seed of their own, hundreds of them (a corpus
    split of 15 people ranked snapshots by how they matched those 15): no one the prior trains on or the main job
    trains and evaluates on."""
    from conftest import compose_command

    cfg = compose_command("face_prior", [])
    assert cfg.reference.source == "faces"
    reference = _traits(face_set_people(cfg.reference.identities, cfg.reference.seed))
    others = _traits(face_set_people(cfg.reference.identities, cfg.reference.others_seed))
    assert len(reference) >= 300 and len(others) >= 300
    training = _traits(face_set_people(cfg.faces.identities, cfg.faces.seed))
    corpus = _traits(sample_identities(cfg.data.corpus.identities, cfg.data.corpus.seed))
    assert not reference & training and not reference & corpus and not others & (reference | training | corpus)


def test_a_reference_of_the_training_people_is_refused():
    from conftest import compose_command

    from experiments.face_prior import other_faces, reference_faces

    cfg = compose_command("face_prior", ["reference.seed=1000", "faces.seed=1000"])
    with pytest.raises(ValueError, match=r"reference.seed=1000 is faces.seed"):
        reference_faces(cfg, datamodule=None)
    cfg = compose_command("face_prior", ["reference.seed=3000", "reference.others_seed=3000"])
    with pytest.raises(ValueError, match=r"reference.others_seed=3000 is reference.seed or faces.seed"):
        other_faces(cfg)


def _people(n: int, g: torch.Generator, photos: int = 10, dim: int = 16):
    """Stand-in probe features: a mean per person, each photo that mean plus smaller noise (pose, light)."""
    means = torch.randn(n, 1, dim, generator=g)
    return (means + 0.5 * torch.randn(n, photos, dim, generator=g)).reshape(-1, dim), torch.arange(n).repeat_interleave(
        photos
    )


@pytest.mark.parametrize("people, floors", [(15, 3.0), (400, 1.0)])
def test_real_faces_of_other_people_sit_above_the_floor(people, floors):
    """Why the curve also scores other people's real faces: the floor's halves share their people, so faces of other
    people (what a perfect unconditional prior draws) score above it, by several floors against a few people; that
    score is the mean of the subsets it names."""
    from experiments.face_prior import other_people_fd
    from lightning_modules.metrics.quality import probe_quality

    g = torch.Generator().manual_seed(0)
    others, _ = _people(400, g)
    real, labels = _people(people, g)
    floor = probe_quality(others[:1000], real, labels)["fd_probe/real"]
    score = other_people_fd(others, real, labels, 1000)
    assert score > floors * floor
    subsets = [torch.randperm(4000, generator=torch.Generator().manual_seed(k))[:1000] for k in range(5)]
    expected = sum(probe_quality(others[i], real, labels)["fd_probe"] for i in subsets) / 5
    assert score == pytest.approx(expected, rel=1e-12)


def test_a_curve_scored_against_other_faces_is_not_continued(tmp_path):
    """curve.csv written before the reference column (the shipped prior's rows) gains it, blank; the curve plotted
    is the rows scored against the last row's reference only."""
    from experiments.face_prior import CURVE_COLUMNS, append_row, curve_rows, plot_curve

    path = tmp_path / "curve.csv"
    path.write_text("kimg,seconds,img_per_s,fd_probe,fd_probe_real,kid_probe,kid_probe_real,n\n0.0,0,,50,0.75,3,0,68\n")
    append_row(path, {"kimg": 10.0, "fd_probe": 0.8, "fd_probe_real": 0.1, "n": 1000, "reference": "faces:400@3000"})
    append_row(path, {"kimg": 20.0, "fd_probe": 0.6, "fd_probe_real": 0.1, "n": 1000, "reference": "faces:400@3000"})
    assert path.read_text().splitlines()[0] == ",".join(CURVE_COLUMNS)
    assert [(r["kimg"], r["reference"]) for r in csv.DictReader(open(path, newline=""))] == [
        ("0.0", ""),
        ("10.0", "faces:400@3000"),
        ("20.0", "faces:400@3000"),
    ]
    assert [r["kimg"] for r in curve_rows(path)] == ["10.0", "20.0"]
    append_row(path, {"kimg": 20.0, "fd_probe": 5.0, "fd_probe_real": 0.75, "n": 34, "reference": "corpus:val"})
    assert [r["kimg"] for r in curve_rows(path)] == ["20.0"]
    assert plot_curve(path, tmp_path / "curve.png").stat().st_size > 0
    old_header_only = tmp_path / "empty.csv"
    old_header_only.write_text("kimg,seconds,img_per_s,fd_probe,fd_probe_real,kid_probe,kid_probe_real,n\n")
    append_row(old_header_only, {"kimg": 0.0, "fd_probe": 1.0, "reference": "corpus:val"})
    assert [r["reference"] for r in csv.DictReader(open(old_header_only, newline=""))] == ["corpus:val"]


def test_face_set_crops_are_the_corpus_crops(tmp_path):
    """One identity written as the corpus writes it (JPEG on disk, landmarks.csv) and aligned by the main job's
    FaceAligner gives the face set's crops: the prior is trained on the distribution the main job reads."""
    ident = dataclasses.replace(sample_identities(3, 5)[0], has_voice=False)
    rows = _build_identity((ident, None, str(tmp_path)))
    header = "path,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,"
    header += "mouth_right_x,mouth_right_y"
    (tmp_path / "landmarks.csv").write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    aligner = FaceAligner("file", size=64, landmarks_csv=tmp_path / "landmarks.csv")
    corpus = np.stack([aligner(tmp_path / "vggface" / r[0], key=r[0]) for r in rows])
    ours = _identity_faces((ident.traits, ident.seed, 64, "arcface"))
    assert ours.shape == corpus.shape
    # landmarks.csv rounds to 0.01 px: at most a level or two of bilinear difference
    assert np.abs(ours.astype(int) - corpus.astype(int)).max() <= 3


def _trainer(**kwargs):
    torch.manual_seed(0)
    kw = dict(img_resolution=16, z_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4)
    return FacePriorTrainer(**{**kw, **kwargs})


def test_every_phase_runs_and_resume_is_exact():
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    a = _trainer(G_reg_interval=2, D_reg_interval=2)
    stats = {}
    for _ in range(4):
        stats.update(a.step(real))
    assert set(stats) == {"loss/G", "pl/length", "loss/D", "r1/penalty"} and all(np.isfinite(list(stats.values())))
    buffer = io.BytesIO()  # through bytes, as a resumed run reads last.pt (the live state shares Adam's tensors)
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = _trainer(G_reg_interval=2, D_reg_interval=2)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(1)
    a.step(real)
    torch.manual_seed(1)
    b.step(real)
    for name in ("G", "D", "G_ema"):
        for (k, x), y in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(x, y), f"{name}.{k}"


def test_a_resume_takes_this_runs_lr_and_keeps_adams_moments():
    """A run resumed with other lrs (a smaller step for its last kimg, G's own lr) steps at the new lrs, with the
    saved moments: the same step as the unbroken trainer's after its lrs are set by hand."""
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    a = _trainer(G_reg_interval=2, D_reg_interval=2)
    for _ in range(3):
        a.step(real)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = _trainer(G_reg_interval=2, D_reg_interval=2, lr=0.0005, G_lr=0.001)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    lrs = {"G": 0.001 * 2 / 3, "D": 0.0005 * 2 / 3}  # NVlabs' lazy rescale, interval 2
    for net in ("G", "D"):
        assert [g["lr"] for g in b.opt[net].param_groups] == [lrs[net]]
        assert b.opt[net].state_dict()["state"].keys() == a.opt[net].state_dict()["state"].keys()
        for group in a.opt[net].param_groups:
            group["lr"] = lrs[net]
    torch.manual_seed(1)
    a.step(real)
    torch.manual_seed(1)
    b.step(real)
    for name in ("G", "D"):
        for (k, x), y in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(x, y), f"{name}.{k}"


def test_export_reads_back_as_the_trained_networks(tmp_path):
    t = _trainer()
    t.step(torch.rand(4, 3, 16, 16) * 2 - 1)
    torch.save(export_face_prior(t.G_ema, t.D), tmp_path / "prior.pt")
    G, d_kwargs, trunk = load_pretrained(tmp_path / "prior.pt")
    z = torch.randn(3, 16)
    assert torch.equal(G(z, noise_mode="const"), t.G_ema(z, noise_mode="const"))
    D = Discriminator(img_resolution=16, **d_kwargs)
    D.load_state_dict(trunk)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(D(x)[0], t.D(x)[0])


def test_nvlabs_layout_names_every_buffer(tmp_path):
    """NVlabs' D keeps a resample filter in every conv layer and block; its G in every synthesis layer."""
    t = _trainer()
    exported = export_face_prior(t.G_ema, t.D)
    d = exported["discriminator"]
    assert d["init_kwargs"]["architecture"] == "resnet" and d["init_kwargs"]["channel_base"] == 128
    assert {
        "b16.resample_filter",
        "b16.fromrgb.resample_filter",
        "b8.skip.resample_filter",
        "b4.conv.resample_filter",
    } <= set(d["state_dict"])
    assert "synthesis.b8.conv0.resample_filter" in exported["state_dict"]


@pytest.fixture(scope="module")
def shipped():
    try:
        path = weights.shipped_file("face_prior_64")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return load_pretrained("face_prior_64"), path


@pytest.mark.integration
def test_shipped_prior_draws_faces(shipped):
    """The shipped G draws varied 64 px images whose average is the face set's average face."""
    (G, d_kwargs, trunk), path = shipped
    assert path.stat().st_size <= 20 * 2**20 and G.img_resolution == 64 and trunk is not None
    with torch.no_grad():
        faces = G(torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(0)), noise_mode="const")
    assert faces.shape == (64, 3, 64, 64) and torch.isfinite(faces).all()
    assert faces.std(0).mean() > 0.1  # not one template
    real, _ = render_face_set(8, seed=4321, size=64, workers=1)
    mean_real = normalize(torch.from_numpy(real)).mean(0)
    corr = torch.corrcoef(torch.stack([faces.clamp(-1, 1).mean(0).flatten(), mean_real.flatten()]))[0, 1]
    # untrained Gs of these widths: -0.17 to 0.32 (seeds 0-2); the prior at 30 kimg already 0.70
    assert corr > 0.6, f"the prior's mean image correlates {corr:.2f} with the mean real face"


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "face_prior_64.pt").write_bytes(b"not the prior")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  face_prior_64.pt\n")
    monkeypatch.setattr(weights, "FOLDER", tmp_path)
    monkeypatch.setattr(weights, "SUMS", tmp_path / "SHA256SUMS")
    with pytest.raises(ValueError, match="SHA-256 .* is not the recorded"):
        load_pretrained("face_prior_64")


@pytest.mark.slow
def test_the_command_trains_resumes_exports_and_warm_starts(tmp_path):
    """experiments.face_prior end to end on a small corpus: a curve row per snapshot, a rerun that resumes
    (no row twice), a prior file that load_pretrained reads, and init= that continues from that file."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    small = [
        "faces.identities=6",
        "faces.size=16",
        "network.channel_base=64",
        "network.channel_max=16",
        "training.batch_size=8",
        "snapshot_kimg=0.016",
        "eval_faces=16",
        "reference.identities=4",
        "data.corpus.identities=12",
        "data.face_size=16",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "threads=1",
        "workers=1",
    ]

    def run(out, kimg, *extra):
        cmd = [sys.executable, "-m", "experiments.face_prior", f"out={out}", f"total_kimg={kimg}", *small, *extra]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    run(tmp_path / "a", 0.016)
    run(tmp_path / "a", 0.032)  # resumes from last.pt
    with open(tmp_path / "a" / "curve.csv", newline="") as f:
        kimg = [float(r["kimg"]) for r in csv.DictReader(f)]
    assert kimg == [0.0, 0.016, 0.032]
    G, _, trunk = load_pretrained(tmp_path / "a" / "face_prior.pt")
    assert G.img_resolution == 16 and trunk is not None
    run(tmp_path / "b", 0.048, f"init={tmp_path / 'a' / 'face_prior.pt'}")
    with open(tmp_path / "b" / "curve.csv", newline="") as f:
        rows = [(float(r["kimg"]), r["reference"], float(r["fd_probe_others"])) for r in csv.DictReader(f)]
    assert [r[:2] for r in rows] == [(k, "faces:4@3000") for k in (0.0, 0.016, 0.032, 0.048)]
    assert len({r[2] for r in rows}) == 1 and rows[0][2] > 0  # the same other people's faces at every snapshot
    # continued against other faces: the start is scored against them before the first step
    run(tmp_path / "c", 0.048, f"init={tmp_path / 'a' / 'face_prior.pt'}", "reference.source=corpus")
    with open(tmp_path / "c" / "curve.csv", newline="") as f:
        rows = [(float(r["kimg"]), r["reference"]) for r in csv.DictReader(f)]
    assert rows[2:] == [(0.032, "faces:4@3000"), (0.032, "corpus:val"), (0.048, "corpus:val")]


@pytest.mark.parametrize("overrides, gamma", [([], 0.0256), (["training.batch_size=16"], 0.0512)])
def test_the_command_builds_its_trainer_with_nvlabs_r1_rule(overrides, gamma):
    """face_prior.yaml's r1_gamma is ${r1_rule:...}: the command passed the unresolved string to the trainer."""
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments.face_prior import build_trainer

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose("face_prior", [*overrides, "network.channel_base=64", "network.channel_max=16"])
    GlobalHydra.instance().clear()
    trainer = build_trainer(cfg)
    assert trainer.loss.r1_gamma == gamma  # 0.0002 * 64^2 / batch
    assert trainer.device == torch.device("cpu") and trainer.loss.pl_mean.device == trainer.device


@pytest.mark.parametrize("device, ok", [("cpu", True), ("cuda", True), ("cuda:1", True), ("gpu", False), ("", False)])
def test_the_command_names_its_device_by_torch_s_names(device, ok):
    from conftest import compose_command

    from experiments.schema import check_command_config

    cfg = compose_command("face_prior", [f"device={device}"])
    if ok:
        check_command_config(cfg, "face_prior")
    else:
        with pytest.raises(ValueError, match="device"):
            check_command_config(cfg, "face_prior")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_step_on_the_gpu_is_the_cpu_step_and_resumes_exactly(monkeypatch):
    """`device=cuda` trains the same networks: from the same weights and latents (drawn on the CPU either way) one
    step of every phase moves G, D and G_ema as the CPU step does, and a GPU trainer resumed from its state steps on
    as the unbroken one (the path-length noise is drawn on the GPU: the command keeps its generator's state)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    cpu, gpu = _trainer(G_reg_interval=1, D_reg_interval=1), _trainer(G_reg_interval=1, D_reg_interval=1, device="cuda")
    torch.manual_seed(3)
    stats_cpu = cpu.step(real)
    torch.manual_seed(3)
    stats_gpu = gpu.step(real)
    assert stats_cpu.keys() == stats_gpu.keys()
    for name in ("G", "D", "G_ema"):
        for (k, x), y in zip(getattr(cpu, name).state_dict().items(), getattr(gpu, name).state_dict().values()):
            assert y.is_cuda
            torch.testing.assert_close(y.cpu(), x, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    buffer = io.BytesIO()
    torch.save(gpu.state_dict(), buffer)
    buffer.seek(0)
    resumed = _trainer(G_reg_interval=1, D_reg_interval=1, device="cuda")
    resumed.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    for t in (gpu, resumed):
        torch.manual_seed(4)
        t.step(real)
    for (k, x), y in zip(gpu.G_ema.state_dict().items(), resumed.G_ema.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7, msg=f"G_ema.{k}")
