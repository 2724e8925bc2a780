"""The domain of every config value, checked before any work: training against conf/schema.yaml, the other
commands against conf/commands_schema.yaml (JSON Schema both, plus an `ascending` keyword)."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import jsonschema
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

SCHEMA = Path(__file__).resolve().parent / "conf" / "schema.yaml"  # the domain of every config value
COMMANDS_SCHEMA = SCHEMA.with_name("commands_schema.yaml")  # the same for generate, evaluate, report, curves


def _ascending(validator, wanted, instance, schema):
    """JSON Schema keyword `ascending: true`: a list in strictly increasing order (e.g. crop_frames [min, max])."""
    if wanted and isinstance(instance, list) and any(a >= b for a, b in zip(instance, instance[1:])):
        yield jsonschema.ValidationError(f"{instance} must be in increasing order ([min, max])")


@functools.cache
def schema_validator(path: Path = SCHEMA, section: str | None = None):
    """The validator of the schema in `path`, or of its top-level property `section` (with the shared $defs)."""
    base = jsonschema.Draft202012Validator
    validator = jsonschema.validators.extend(base, {"ascending": _ascending})
    schema = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # ${one_of:...}: the code's own lists
    if section is not None:
        schema = {**schema["properties"][section], "$defs": schema.get("$defs", {})}
    return validator(schema)


def check_values(cfg: DictConfig, keys, schema: Path = SCHEMA, section: str | None = None) -> None:
    """The values of `keys` in `cfg` against their domains in `schema` (its `section`), before any work; every
    bad one is named with its key and the problem."""
    plain, unresolved = {}, {}
    for k in (k for k in keys if k in cfg):
        try:
            plain[k] = OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        except OmegaConfBaseException as err:  # e.g. ${r1_rule:...} of a batch size that is no number
            unresolved[k] = str(err).splitlines()[0]
    validator = schema_validator(schema, section)
    errors = sorted(validator.iter_errors(plain), key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    # JSON Schema has no NaN or infinity, and NaN passes every bound: no value of ours means either
    lines += [f"{key}: {value} is not a finite number" for key, value in _non_finite(plain)]
    lines += [] if lines else [f"{key}: {problem}" for key, problem in unresolved.items()]  # the cause first
    if lines:
        raise ValueError(f"config: {'; '.join(lines)}; fix the override(s) (the domains are in {schema})")


def check_data_overrides(overrides: dict) -> None:
    """A command's `data_overrides` against the training schema's data section, before any work, named as the
    user wrote them (`data_overrides.<key>`)."""
    try:
        check_values(OmegaConf.create({"data": dict(overrides)}), ["data"])
    except ValueError as err:
        raise ValueError(re.sub(r"(config: |; )data\.", r"\1data_overrides.", str(err))) from None


def _non_finite(value, key=""):
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}.{i}")


def check_config(cfg: DictConfig) -> None:
    """Every training value against its domain in conf/schema.yaml, then the settings that must agree with one
    another (otherwise a failure only after stage 1 had trained)."""
    check_values(
        cfg, ("seed", "eval_split", "evaluate", "data", "model", "pretrain_encoder", "metrics", "callbacks", "trainer")
    )
    accumulate, batch = cfg.model.get("accumulate", 1), cfg.data.get("batch_size")
    if batch and accumulate and batch % accumulate:
        raise ValueError(
            f"config: data.batch_size={batch} does not split into model.accumulate={accumulate} equal micro-batches; "
            "make the batch a multiple of accumulate"
        )


def check_command_config(cfg: DictConfig, command: str) -> None:
    """Every value of a command (generate, evaluate, report, curves) against its domain in
    conf/commands_schema.yaml (evaluate's metrics section against the training schema's)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"config: {', '.join(missing)} must be given: python -m experiments.{command} "
            + " ".join(f"{k}=..." for k in missing)
        )
    # paths: locations only, some resolved by Hydra at run time (output_dir)
    check_values(cfg, [k for k in cfg if k not in ("metrics", "paths")], COMMANDS_SCHEMA, command)
    check_values(cfg, ["metrics"])
