"""Every experiment composes with every dataset on the CPU trainer and builds its datamodule, model and trainer
(the lightning-hydra-template's sweep test, with the real config tree)."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest
from conftest import DATASETS, EXPERIMENTS, ROOT
from lightning import LightningDataModule, LightningModule, Trainer
from omegaconf import OmegaConf

from experiments.run import build_callbacks, build_loggers


def test_config_groups_present():
    assert {"baseline", "nose", "relu", "dcgan", "stylegan", "smoke", "encoder_pretrain"} <= set(EXPERIMENTS)
    assert {"embedded", "voxvgg"} <= set(DATASETS)
    for group, names in {
        "trainer": ["cpu", "gpu", "ddp", "ddp_sim"],
        "logger": ["wandb", "csv", "many", "none"],
        "callbacks": ["default"],
        "paths": ["default"],
    }.items():
        for name in names:
            assert (ROOT / "experiments/conf" / group / f"{name}.yaml").is_file(), f"{group}/{name}"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_a_group_override_wins_over_every_experiment(compose_cfg, exp):
    """Experiments hold deltas: selecting an encoder group on the command line changes the composed encoder."""
    for group, key, value in (("resnet18_relu", "act", "relu"), ("resnet18_no_se", "se", False)):
        cfg = compose_cfg(f"+exp={exp}", f"model/encoder={group}")
        assert cfg.model.encoder[key] == value, f"+exp={exp} model/encoder={group}: {key}={cfg.model.encoder[key]}"


def test_the_ablations_select_encoder_groups(compose_cfg):
    assert compose_cfg("+exp=nose").model.encoder.se is False
    assert compose_cfg("+exp=relu").model.encoder.act == "relu"
    for exp in ("nose", "relu"):
        assert "override /model/encoder:" in (ROOT / "experiments/conf/exp" / f"{exp}.yaml").read_text()


def test_a_run_from_ones_own_encoder_drops_stage_1_whole(compose_cfg):
    """`~pretrain_encoder` (stage 2 from model.encoder_ckpt) must leave no stage-1 fragment behind: a value the
    experiment set under pretrain_encoder would bring the stage back half-configured."""
    assert compose_cfg("+exp=voice_prior").pretrain_encoder.model.aux == {"nationality": 1.0}
    for exp in EXPERIMENTS:
        assert compose_cfg(f"+exp={exp}", "~pretrain_encoder").get("pretrain_encoder") is None, exp


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("exp", EXPERIMENTS)
@pytest.mark.integration
def test_experiment_instantiates(compose_cfg, exp, data, tmp_path):
    cfg = compose_cfg(
        f"+exp={exp}",
        f"data={data}",
        "trainer=cpu",
        "logger=csv",
        f"data.root={tmp_path}" if data == "voxvgg" else "data.corpus.identities=12",
    )
    text = (ROOT / "experiments/conf/exp" / f"{exp}.yaml").read_text()
    assert text.startswith("# @package _global_"), f"exp/{exp}.yaml must start with '# @package _global_'"
    if data == "voxvgg" and "\n  corpus:" in text:  # an experiment of the embedded corpus (voice_prior) on a data root
        with pytest.raises(hydra.errors.InstantiationException, match="exactly one of `root`"):
            hydra.utils.instantiate(cfg.data, _convert_="all")
        return
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, LightningDataModule)
    # the face size comes from the config itself (model.img_resolution: ${data.face_size})
    # stage 2 of a two-stage experiment reads the encoder file stage 1 writes at run time (tests/test_run.py)
    stage2 = {"encoder_mode": "joint"} if cfg.get("pretrain_encoder") and "encoder_ckpt" in cfg.model else {}
    if cfg.model.get("generator_train") == "frozen" and not cfg.model.get("generator_init"):
        stage2["generator_train"] = "finetune"  # hires_cpu: the user names the file at run time; frozen needs it
    model = hydra.utils.instantiate(cfg.model, num_classes=5, feature_dim=dm.feature_dim, _recursive_=False, **stage2)
    assert isinstance(model, LightningModule)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg, True), logger=build_loggers(cfg))
    assert isinstance(trainer, Trainer)


def test_callbacks_are_built_from_their_config_alone(compose_cfg):
    """run.py builds whatever conf/callbacks lists, in its order: the resume state first, the metrics callback
    from the `metrics` section; encoder pretraining has no generator, so neither grids nor metrics."""
    from lightning_modules.callbacks.checkpoint import KimgCheckpoint
    from lightning_modules.callbacks.resume import ExactResume
    from lightning_modules.callbacks.samples import SampleGrids
    from lightning_modules.metrics.callback import MetricsCallback

    built = build_callbacks(compose_cfg("+exp=smoke", "metrics.callback.every_kimg=3"), True)
    kinds = [type(c) for c in built]
    assert kinds[0] is ExactResume and kinds.index(ExactResume) < kinds.index(KimgCheckpoint)
    assert {MetricsCallback, SampleGrids} <= set(kinds)
    assert next(c for c in built if isinstance(c, MetricsCallback)).every_nimg == 3000
    pretrain = {type(c) for c in build_callbacks(compose_cfg("+exp=encoder_pretrain"), True)}
    assert MetricsCallback not in pretrain and SampleGrids not in pretrain and ExactResume in pretrain
    assert MetricsCallback not in {type(c) for c in build_callbacks(compose_cfg("callbacks.metrics=null"), True)}


def test_ablations_differ_from_baseline_only_where_they_should(compose_cfg):
    base, nose, relu = (compose_cfg(f"+exp={e}").model for e in ("baseline", "nose", "relu"))
    assert base.encoder.se and base.encoder.act == "mish"
    assert not nose.encoder.se and nose.encoder.act == "mish"
    assert relu.encoder.se and relu.encoder.act == "relu"
    for other in (nose, relu):
        assert other.generator == base.generator and other.discriminator == base.discriminator
        assert (other.lr, list(other.betas)) == (base.lr, list(base.betas)) == (2e-4, [0.5, 0.999])


@pytest.mark.integration
def test_cli_prints_composed_config():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=baseline", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: lightning_modules.voice2face.Voice2FaceGAN" in out.stdout
    assert "se_reduction: 16" in out.stdout


@pytest.mark.integration
def test_cli_unknown_experiment_names_the_choices():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=no_such_exp", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "no_such_exp" in out.stderr and "baseline" in out.stderr


def exp_parent_overrides(exp: str) -> list[str]:
    """The overrides that compose what `exp` starts from: its parent experiment and the groups it selects."""
    defaults = OmegaConf.load(ROOT / "experiments/conf/exp" / f"{exp}.yaml").get("defaults", [])
    overrides = []
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":
            overrides.append(f"+exp={entry}")
        elif not isinstance(entry, str):
            ((key, value),) = OmegaConf.to_container(entry).items()
            group = key.removeprefix("override ").removeprefix("/")
            overrides.append(f"~{group}" if value is None else f"{group}={value}")
    return overrides


def leaves(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    else:
        yield path, node


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiments_hold_deltas_only(compose_cfg, exp):
    """Every value an experiment sets differs from what it starts from (its parent and the groups it selects):
    a restated value would silently win over a group override on the command line."""
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "experiments/conf/exp" / f"{exp}.yaml"))
    own.pop("defaults", None)
    parent = OmegaConf.to_container(compose_cfg(*exp_parent_overrides(exp)), resolve=False)
    for key, value in leaves(own):
        node = parent
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        assert node != value, f"exp/{exp}.yaml restates {key}: {value!r} (the value it starts from)"


def option_files():
    conf = ROOT / "experiments/conf"
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        if group != ".":
            yield group, path.stem


@pytest.mark.parametrize("group, option", list(option_files()))
def test_every_yaml_is_used(group, option):
    """Each option of a config group is selected where a user or a run selects it: a defaults list, an experiment,
    the sweeps, the Makefile, CI, README or the docs. A mention in a test is no use (a YAML only tests name is
    dead config)."""
    conf = ROOT / "experiments/conf"
    short = group.split("/")[-1]
    forms = [f"{group}={option}", f"{short}={option}", f"{short}: {option}", f"- {option}", f"+exp={option}"]
    forms += [f"/{group}: {option}", f"{group}: {option}"]
    texts = [p.read_text() for p in conf.rglob("*.yaml") if p != conf / group / f"{option}.yaml"]
    texts += [(ROOT / f).read_text() for f in ("Makefile", "README.md", ".ci/run")]
    texts += [p.read_text() for p in (ROOT / "docs").glob("*.md")]
    assert any(form in text for text in texts for form in forms), f"{group}/{option}.yaml is used by nothing"


OUR_CONFIGS = [  # composed sections whose _target_ is one of our classes, under each option of their group
    ([], "model"),
    ([], "model.encoder"),
    ([], "model.generator"),
    ([], "model.discriminator"),
    (["model/generator=dcgan", "model/discriminator=dcgan"], "model.generator"),
    (["model/generator=dcgan", "model/discriminator=dcgan"], "model.discriminator"),
    (["model/generator=stylegan"], "model.generator"),
    (["+exp=encoder_pretrain"], "model"),
    ([], "callbacks.samples"),
    ([], "callbacks.checkpoint"),
    ([], "data.features"),  # the default option only: the others are deltas from it
]


@pytest.mark.parametrize("overrides, section", OUR_CONFIGS)
def test_constructor_defaults_agree_with_the_yaml(compose_cfg, overrides, section):
    """A YAML default and the constructor's default of the same argument are one value (e.g. a sample count of
    16 in the YAML and 8 in the code would make the code's users and the YAML's users disagree)."""
    import inspect

    from hydra.utils import get_class

    node = OmegaConf.select(compose_cfg(*overrides), section)
    plain = OmegaConf.to_container(node, resolve=False)
    target = get_class(plain.get("_target_", "datamodules.audio.AudioFeatures"))
    params = inspect.signature(target).parameters
    for key, value in plain.items():
        if key.startswith("_") or key not in params or isinstance(value, (dict, str)) and "${" in str(value):
            continue
        default = params[key].default
        if default is None and hasattr(target, "KIND_DEFAULTS"):  # AudioFeatures: None means the kind's own
            default = target.KIND_DEFAULTS[plain["kind"]].get(key)
        if default is inspect.Parameter.empty:
            continue
        default = list(default) if isinstance(default, tuple) else default
        assert default == value, f"{section}.{key}: YAML {value!r}, {target.__name__} default {default!r}"


@pytest.mark.parametrize(
    "exp, overrides, gamma",
    [
        ("prior_cpu", [], 0.0256),  # 64 px, batch 32
        ("baseline_cpu", [], 0.0064),  # 32 px, batch 32
        ("baseline", [], 0.0128),  # 64 px, batch 64
        ("hires256", ["model.generator_init=x.pkl"], 0.4096),  # 256 px, batch 32
        ("baseline", ["data.batch_size=32"], 0.0256),  # the batch from the command line: the weight follows
        ("baseline_cpu", ["data.face_size=64"], 0.0256),
        ("baseline", ["model.r1_gamma=1.5"], 1.5),  # a value given replaces the rule
    ],
)
def test_r1_gamma_follows_nvlabs_rule_from_the_face_size_and_batch(compose_cfg, exp, overrides, gamma):
    """r1_gamma was worked out by hand in four experiment files, so `data.batch_size=64` on the command line left it
    stale; `${r1_rule:...}` works it out from the settings it depends on (0.0002 * res^2 / batch, NVlabs')."""
    cfg = compose_cfg(f"+exp={exp}", *overrides)
    assert cfg.model.r1_gamma == gamma  # exactly the literals the files held


# A Python default that differs from its YAML value on purpose, and why; any other difference fails below.
INTENDED_DIFFERENCES = {
    ("VoxVGGDataModule", "num_workers"): "built in code (tests, notebooks) it loads in-process; real-data runs use 4",
    ("FacePriorTrainer", "channel_base"): "the class keeps NVlabs' widths; face_prior.yaml has the shipped CPU prior's",
    ("FacePriorTrainer", "channel_max"): "as channel_base",
    ("FacePriorTrainer", "use_noise"): "NVlabs' noise inputs; the shipped prior trains without (docs/face_prior.md)",
}


def _classes_and_yaml():
    from datamodules.voxvgg import VoxVGGDataModule
    from lightning_modules.encoder_pretrain import EncoderPretrain
    from lightning_modules.face_prior import FacePriorTrainer
    from lightning_modules.voice2face import Voice2FaceGAN

    def load(path, *keys):
        cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "experiments/conf" / path))
        return {k: v for key in keys or [None] for k, v in (cfg[key] if key else cfg).items()}

    yield Voice2FaceGAN, load("model/voice2face.yaml")
    yield EncoderPretrain, load("model/encoder_pretrain.yaml")
    yield VoxVGGDataModule, load("data/voxvgg.yaml")
    yield FacePriorTrainer, load("face_prior.yaml", "network", "training")


def test_python_defaults_agree_with_their_yaml():
    """Each setting has one value: a class's default and the YAML that configures it agree (None and {} both mean
    "no settings"), or the difference is listed above with its reason."""
    import inspect

    compared, wrong = 0, []
    for cls, yaml in _classes_and_yaml():
        for name, param in inspect.signature(cls).parameters.items():
            value = yaml.get(name, inspect.Parameter.empty)
            if param.default is inspect.Parameter.empty or value is inspect.Parameter.empty:
                continue
            if isinstance(value, str) and value.startswith("${"):
                continue  # worked out from other settings (e.g. ${r1_rule:...})
            default = list(param.default) if isinstance(param.default, tuple) else param.default
            same = default == value or (default in (None, {}) and value in (None, {}))
            compared += 1
            if not same and (cls.__name__, name) not in INTENDED_DIFFERENCES:
                wrong.append(f"{cls.__name__}.{name}: Python {default!r}, YAML {value!r}")
    assert not wrong, wrong
    assert compared > 50


def test_the_metrics_settings_have_no_python_defaults():
    """The metrics group's values live in its YAML only: every section is a dataclass without defaults that takes
    exactly the YAML's keys, and a config that lacks one or adds one is refused by its dotted name."""
    from dataclasses import MISSING, fields, is_dataclass

    from lightning_modules.metrics.settings import MetricsSettings

    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "experiments/conf/metrics/default.yaml"))
    settings = MetricsSettings.of(yaml)
    sections = [settings]
    while sections:
        section = sections.pop()
        for f in fields(section):
            assert f.default is MISSING and f.default_factory is MISSING, f"{type(section).__name__}.{f.name}"
            if is_dataclass(getattr(section, f.name)):
                sections.append(getattr(section, f.name))
    assert settings.ppl.num_samples == yaml["ppl"]["num_samples"] and settings.identity.sf2f.block == 100
    del yaml["identity"]["wen"]["seed"]
    yaml["fid"]["batchsize"] = 64
    with pytest.raises(ValueError, match=r"metrics.fid: unknown \['batchsize'\]"):
        MetricsSettings.of(yaml)
    del yaml["fid"]["batchsize"]
    with pytest.raises(ValueError, match=r"metrics.identity.wen: missing \['seed'\]"):
        MetricsSettings.of(yaml)
