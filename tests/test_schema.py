"""conf/schema.yaml: every shipped experiment and trainer option validates, and every numeric or boolean value
under data, model, pretrain_encoder, metrics, callbacks and trainer of each has a domain there (a new key without
one fails here, not silently at run time)."""

from __future__ import annotations

import pytest
from conftest import EXPERIMENTS
from omegaconf import OmegaConf

from experiments.schema import SCHEMA, check_config


def properties(schema: dict) -> dict:
    """The `properties` of an object schema, looking into anyOf branches (an optional section)."""
    found = dict(schema.get("properties", {}))
    for branch in schema.get("anyOf", []):
        found.update(branch.get("properties", {}))
    return found


def uncovered(value, schema: dict, path: str) -> list[str]:
    if isinstance(value, dict):
        props = properties(schema)
        return [
            p
            for k, v in value.items()
            if not str(k).startswith("_")
            for p in (uncovered(v, props[k], f"{path}.{k}") if k in props else [f"{path}.{k}"] if has_number(v) else [])
        ]
    return []


def has_number(value) -> bool:
    if isinstance(value, dict):
        return any(has_number(v) for k, v in value.items() if not str(k).startswith("_"))
    if isinstance(value, list):
        return any(has_number(v) for v in value)
    return isinstance(value, (int, float, bool))


SECTIONS = ("data", "model", "pretrain_encoder", "metrics", "callbacks", "trainer")
TRAINERS = sorted(p.stem for p in (SCHEMA.parent / "trainer").glob("*.yaml"))


def assert_every_value_has_a_domain(cfg, what: str) -> None:
    check_config(cfg)
    schema = OmegaConf.to_container(OmegaConf.load(SCHEMA))
    for section in SECTIONS:
        # unresolved: an interpolated value (callbacks.metrics.metrics_cfg: ${metrics}) has its domain where it is set
        plain = OmegaConf.to_container(cfg.get(section), resolve=False) if cfg.get(section) is not None else None
        missing = uncovered(plain, schema["properties"][section], section)
        assert not missing, f"{what}: no domain in {SCHEMA.name} for {missing}"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_validates_and_has_a_domain_for_each_value(compose_cfg, exp):
    assert_every_value_has_a_domain(compose_cfg(f"+exp={exp}"), f"+exp={exp}")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_validates_and_has_a_domain_for_each_value(compose_cfg, trainer):
    assert_every_value_has_a_domain(compose_cfg(f"trainer={trainer}"), f"trainer={trainer}")


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.max_epochs=-2", "trainer.max_epochs"),
        ("trainer.precision=bf32", "trainer.precision"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
        ("+trainer.num_nodes=0", "trainer.num_nodes"),
        ("trainer.deterministic=maybe", "trainer.deterministic"),
        ("trainer.limit_val_batches=-1", "trainer.limit_val_batches"),
    ],
)
def test_a_bad_trainer_value_is_refused_with_its_key(compose_cfg, override, key):
    with pytest.raises(ValueError, match=rf"^config: {key}: "):
        check_config(compose_cfg(override))


@pytest.mark.parametrize(
    "override",
    [
        "trainer.devices=2",
        "trainer.devices=-1",
        "trainer.devices=auto",
        "trainer.devices=[0,1]",
        "trainer.precision=bf16-mixed",
        "trainer.deterministic=warn",
        "+trainer.benchmark=null",
    ],
)
def test_lightning_values_stay_accepted(compose_cfg, override):
    check_config(compose_cfg(override))


REQUIRED = {
    "generate": ["ckpt=x.ckpt", "audio=x.wav"],
    "evaluate": ["ckpt=x.ckpt"],
    "report": ["runs=[x]"],
    "sweep": ["name=ablations"],
    "export": ["ckpt=x.ckpt", "format=rosinality", "out=x.pt"],
    "project": ["G=g.pt", "images=faces"],
    "recipe": [],
    "face_prior": [],
    "demo": ["ckpt=x.ckpt"],
}
COMMANDS = [
    "generate",
    "evaluate",
    "report",
    "curves",
    "sweep",
    "export",
    "project",
    "face_prior",
    "demo",
]  # in commands_schema.yaml


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_value_has_a_domain(command):
    from conftest import compose_command

    from experiments.schema import COMMANDS_SCHEMA, check_command_config

    cfg = compose_command(command, REQUIRED.get(command, ["runs=[x]", "labels=[a]"]))
    check_command_config(cfg, command)
    schema = OmegaConf.to_container(OmegaConf.load(COMMANDS_SCHEMA))["properties"][command]
    plain = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "metrics"}
    assert set(plain) <= set(schema["properties"]), f"no domain in {COMMANDS_SCHEMA.name} for some {command} keys"


@pytest.mark.parametrize("command", [*COMMANDS, "recipe"])
def test_commands_that_run_in_the_working_folder_write_no_log_file_there(command):
    """A command whose Hydra run folder is the working folder logs to the terminal: Hydra's default file logging
    would leave a `<command>.log` in the user's repository (it did for curves and recipe)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(SCHEMA.parent), version_base="1.3"):
        cfg = compose(command, REQUIRED.get(command, ["runs=[x]", "labels=[a]"]), return_hydra_config=True)
    assert cfg.hydra.run.dir == "." and cfg.hydra.job.chdir is False, f"{command}: not run in the working folder"
    handlers = OmegaConf.to_container(cfg.hydra.job_logging).get("handlers", {})
    assert not any("filename" in h for h in handlers.values()), f"{command}.yaml: job_logging writes {handlers}"


@pytest.mark.parametrize(
    "command, override, key",
    [
        ("generate", "truncation_psi=nan", "truncation_psi: nan"),
        ("generate", "window_seconds=inf", "window_seconds"),
        ("generate", "window_seconds=0.001", "window_seconds: 0.001 is less than the minimum of 1"),
        ("export", "+x=-inf", "x: -inf is not a finite number"),
    ],
)
def test_non_finite_and_tiny_values_are_refused_before_any_work(command, override, key):
    """NaN passes every JSON Schema bound (a NaN ψ drew black faces); a 0.001 s window had no frames."""
    from hydra import compose, initialize_config_dir

    from experiments.schema import check_command_config

    with initialize_config_dir(str(SCHEMA.parent), version_base="1.3"):
        cfg = compose(command, [*REQUIRED.get(command, []), override])
    with pytest.raises(ValueError, match=rf"config: .*{key}"):
        check_command_config(cfg, command)


def test_a_nan_training_value_is_refused(compose_cfg):
    with pytest.raises(ValueError, match=r"model.lr: nan is not a finite number"):
        check_config(compose_cfg("+exp=smoke", "model.lr=nan"))
