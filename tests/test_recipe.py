"""The recipe study's config: every variant composes into a real train config, `${previous}` pins the recipe
before the study, and one `cpu_*` variant is baseline_cpu itself."""

from __future__ import annotations

import pytest
from conftest import ROOT, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from experiments.recipe import flatten


@pytest.fixture(scope="module")
def recipe():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose("recipe")
    GlobalHydra.instance().clear()
    return cfg


def variant_cfg(recipe, label, tmp_path):
    variants = OmegaConf.to_container(recipe.variants, resolve=True)
    return compose_train([*recipe.base, *flatten(variants[label])], tmp_path / label)


def test_flatten_splices_nested_lists():
    assert flatten([["a=1", "b=2"], "c=3", ["d=4"]]) == ["a=1", "b=2", "c=3", "d=4"]


@pytest.mark.integration
def test_every_variant_composes(recipe, tmp_path):
    for label in recipe.variants:
        cfg = variant_cfg(recipe, label, tmp_path)
        assert cfg.eval_split == "val", label  # the study never scores the test split


def test_previous_pins_the_recipe_before_the_study(recipe, tmp_path):
    today = variant_cfg(recipe, "today", tmp_path)
    assert today.data.face_size == 64 and today.model.r1_gamma == 10 and today.model.style_mixing_prob == 0.9
    assert today.model.generator.use_noise and not today.model.encoder.stem_pool and today.model.recon_weight == 0
    assert not today.model.generator.img_bias
    px32 = variant_cfg(recipe, "px32", tmp_path)  # its own overrides win over the pins
    assert px32.data.face_size == 32 and px32.model.r1_gamma == 0.0064 and px32.model.generator.use_noise


def test_each_variant_states_only_its_delta(recipe):
    """A variant that starts from another (`${variants.<label>}`) adds only what differs: `model.lr=0.0025` was
    restated in nine variants. No override of its own repeats one it inherits with the same value."""
    raw = OmegaConf.to_container(recipe.variants, resolve=False)
    variants = OmegaConf.to_container(recipe.variants, resolve=True)
    chained = 0
    for label, items in raw.items():
        parent = items[0][len("${variants.") : -1] if str(items[0]).startswith("${variants.") else None
        if parent is None:
            continue
        chained += 1
        inherited = set(flatten(variants[parent]))
        own = flatten(variants[label])[len(flatten(variants[parent])) :]
        assert not inherited & set(own), f"{label} restates {sorted(inherited & set(own))} of {parent}"
    assert chained >= 9


def test_a_cpu_variant_is_baseline_cpu(recipe, tmp_path):
    plain = compose_train(["+exp=baseline_cpu"], tmp_path / "plain")
    labels = {(False, False): "cpu_nonoise", (True, False): "cpu_noise", (False, True): "cpu_meanface"}
    cpu = variant_cfg(recipe, labels[plain.model.generator.use_noise, plain.model.generator.img_bias], tmp_path)
    assert OmegaConf.to_container(cpu.model) == OmegaConf.to_container(plain.model)
    assert OmegaConf.to_container(cpu.data) == OmegaConf.to_container(plain.data)


def test_an_interrupted_variant_resumes_and_keeps_its_log(tmp_path, monkeypatch):
    import experiments.launch
    import experiments.recipe as study

    ran = []
    monkeypatch.setattr(experiments.launch.subprocess, "run", lambda cmd, **kwargs: ran.append(cmd))
    cfg = OmegaConf.create({"out": str(tmp_path), "base": ["+exp=smoke"], "seed": 0})
    (tmp_path / "v" / "checkpoints").mkdir(parents=True)
    (tmp_path / "v" / "checkpoints" / "last.ckpt").write_bytes(b"interrupted")
    (tmp_path / "v.log").write_text("the interrupted attempt\n")
    study.run_variant("v", ["model.lr=0.001"], cfg)
    assert ran[0][-1] == f"ckpt_path={tmp_path / 'v' / 'checkpoints' / 'last.ckpt'}"
    assert (tmp_path / "v.log").read_text() == "the interrupted attempt\n"
    study.run_variant("w", [], cfg)  # never started: a fresh run
    assert not any(a.startswith("ckpt_path=") for a in ran[1])
