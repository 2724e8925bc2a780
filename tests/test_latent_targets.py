"""experiments.latent_targets (the train split's faces projected into W+ of the face prior, one mean per identity)
and the safetensors targets `model.latent_targets` reads: what is written, that it fits the speakers' own faces,
and what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_modules import weights
from lightning_modules.io.latent_targets import read_latent_targets
from lightning_modules.io.legacy import load_generator

SHAPE = (10, 256)  # the face prior's W+


def compose_command(tmp_path, *overrides):
    """The command's config as Hydra composes it at run time, its run folder in `tmp_path`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose(
            "latent_targets", [f"out={tmp_path / 'targets.safetensors'}", *overrides], return_hydra_config=True
        )
    GlobalHydra.instance().clear()
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg.hydra
    return cfg


@pytest.mark.integration
def test_the_command_projects_each_train_speaker_closer_to_its_own_faces_than_to_others(tmp_path):
    """On a 12-identity corpus: one target per train identity, and each target drawn by the prior is nearer (pixel
    MSE) to its own speaker's mean face than to the other speakers' mean faces on average."""
    import hydra.utils

    from experiments.latent_targets import run

    small = ["data.corpus.identities=12", "steps=40", "batch=128", "threads=2"]
    out = run(compose_command(tmp_path, *small))
    cfg = compose_command(tmp_path, *small)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    faces = dm.faces("train")
    names = sorted(faces)
    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == names
        about = f.metadata()
    assert about["G_sha256"] == weights.sha256(weights.shipped_file("face_prior_64")) and about["split"] == "train"
    assert json.loads(about["faces"]) == {name: len(faces[name]) for name in names}
    targets, mask = read_latent_targets(str(out), names, SHAPE)
    assert mask.all() and torch.isfinite(targets).all()
    assert (out.parent / "targets_sheet.png").is_file()
    with torch.no_grad():
        drawn = load_generator("face_prior_64").eval().synthesis(targets, noise_mode="const")
    means = torch.stack([faces[name].float().mean(0) / 127.5 - 1 for name in names])
    mse = (drawn[:, None] - means[None]).square().mean(dim=(2, 3, 4))  # [target, speaker]
    own, others = mse.diagonal(), (mse.sum(1) - mse.diagonal()) / (len(names) - 1)
    assert (own < others).float().mean() >= 0.8, (own, others)


def test_identity_means_in_w_are_one_w_per_speaker_repeated_over_the_layers():
    """space=w: each face's projection is one w, so its speaker's mean is one w for every layer, as the voice's is
    under model.latent_space=w; wplus gives each layer its own."""
    from types import SimpleNamespace

    from experiments.latent_targets import identity_means
    from lightning_modules.nets.stylegan2 import Generator
    from lightning_modules.projector import PixelDistance

    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=512, channel_max=32).eval()
    faces = {n: torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8) for n in ("b", "a")}
    for space in ("w", "wplus"):
        cfg = SimpleNamespace(batch=3, seed=0, steps=5, space=space)  # 3: a speaker's faces straddle two batches
        means = identity_means(G, faces, PixelDistance(), cfg)
        assert sorted(means) == ["a", "b"] and all(m.shape == (G.num_ws, 8) for m in means.values())
        repeated = all(torch.equal(m, m[:1].expand_as(m)) for m in means.values())
        assert repeated == (space == "w"), space


def test_the_command_refuses_a_generator_of_another_resolution(tmp_path):
    from experiments.latent_targets import run

    with pytest.raises(ValueError, match="a 64 px generator, but data.face_size is 32"):
        run(compose_command(tmp_path, "data.corpus.identities=12", "data.face_size=32", "steps=1"))


def write_targets(path, tensors):
    save_file(tensors, str(path), metadata={"what": "test"})
    return str(path)


def test_safetensors_targets_are_read_by_identity_and_a_missing_one_is_left_out(tmp_path):
    goal = {"id0": torch.randn(SHAPE), "id2": torch.randn(SHAPE)}
    targets, mask = read_latent_targets(write_targets(tmp_path / "t.safetensors", goal), ["id0", "id1", "id2"], SHAPE)
    assert mask.tolist() == [True, False, True]
    torch.testing.assert_close(targets[[0, 2]], torch.stack([goal["id0"], goal["id2"]]))


@pytest.mark.parametrize(
    "tensors, words",
    [
        ({"id0": torch.zeros(14, 256)}, r"id0's W\+ has shape \[14, 256\], but this G takes \[10, 256\]"),
        ({"id0": torch.full(SHAPE, float("nan"))}, r"id0: its W\+ holds NaN or infinity"),
        ({"someone_else": torch.zeros(SHAPE)}, "holds no target for any of the 2 training identities"),
    ],
)
def test_safetensors_targets_that_would_mislead_training_are_refused_by_name(tmp_path, tensors, words):
    path = write_targets(tmp_path / "t.safetensors", tensors)
    with pytest.raises(ValueError, match=words) as err:
        read_latent_targets(path, ["id0", "id1"], SHAPE)
    assert "t.safetensors" in str(err.value)


def test_a_file_that_is_no_safetensors_is_refused_by_name(tmp_path):
    path = tmp_path / "targets.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="targets.safetensors: not a safetensors file of latent targets"):
        read_latent_targets(str(path), ["id0"], SHAPE)
    with pytest.raises(FileNotFoundError, match="nowhere: model.latent_targets must be a safetensors file"):
        read_latent_targets(str(tmp_path / "nowhere"), ["id0"], SHAPE)


def test_the_shipped_targets_are_the_corpus_train_speakers_in_the_shipped_prior():
    """face_prior_64_targets: one finite W+ per train speaker of the default corpus (75), projected into the very
    prior that ships beside it (its SHA-256 recorded in the file)."""
    path = weights.shipped_file("face_prior_64_targets")
    with safe_open(str(path), framework="pt") as f:
        about, names = f.metadata(), sorted(f.keys())
    assert about["G_sha256"] == weights.sha256(weights.shipped_file("face_prior_64"))
    assert json.loads(about["corpus"]) == {"identities": 120, "seed": 0} and about["split"] == "train"
    assert sorted(json.loads(about["faces"])) == names and len(names) == 75
    targets, mask = read_latent_targets("face_prior_64_targets", names, SHAPE)
    assert mask.all() and torch.isfinite(targets).all()
    assert targets.std(0).mean() > 0.1  # the speakers differ


def test_a_run_with_missing_targets_is_refused_before_stage_1(compose_cfg, tmp_path):
    from experiments.preflight import check_before_folder

    cfg = compose_cfg("+exp=prior_cpu", f"model.latent_targets={tmp_path / 'nowhere.safetensors'}")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors: model.latent_targets is missing"):
        check_before_folder(cfg)
    check_before_folder(compose_cfg("+exp=prior_cpu"))  # the shipped targets
