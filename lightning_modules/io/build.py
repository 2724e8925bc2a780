"""Build a sub-network from its config dict without running anything a checkpoint could smuggle in.

A checkpoint's hyper-parameters hold the `_target_` dicts of its encoder, generator and discriminator, and loading
the checkpoint builds them. A handed file could name any importable callable there (`os.system`, a nested
`_target_` in an argument), so the target must be one of the project's networks, no value may hold another
`_target_` or Hydra directive, and nothing is instantiated recursively.
"""

from __future__ import annotations

import copy
import inspect

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

NETWORKS = {  # every class a network config may name: the project's own, plus those registered in code
    "lightning_modules.nets.audio_encoder.AudioEncoder",
    "lightning_modules.nets.stylegan2.Generator",
    "lightning_modules.nets.stylegan2.Discriminator",
    "lightning_modules.nets.baselines.DCGANGenerator",
    "lightning_modules.nets.baselines.DCGANDiscriminator",
    "lightning_modules.nets.baselines.StyleGAN1Generator",
}


def register_network(target: str) -> None:
    """Allow one more `_target_` (your own encoder, say) for configs and checkpoints of this process. Only code
    can call this, so a handed file cannot widen what it may build."""
    NETWORKS.add(target)


def _directives(value, path: str) -> list[str]:
    """Paths of every Hydra directive (`_target_`, `_args_`, `_partial_`, ...) inside a config value."""
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if isinstance(k, str) and k.startswith("_") and k.endswith("_")]
        return found + [p for k, v in value.items() for p in _directives(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _directives(v, f"{path}[{i}]")]
    return []


def check_network_config(cfg, what: str) -> None:
    """Raise ValueError unless `cfg` is a plain `{_target_: <one of NETWORKS>, ...}` with no directive below."""
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise ValueError(f"voice2face: {what}: a network config must be a dict with `_target_`, got {cfg!r}")
    if cfg["_target_"] not in NETWORKS:
        raise ValueError(
            f"voice2face: {what}: `_target_` {cfg['_target_']!r} is not one of the project's networks "
            f"({', '.join(sorted(NETWORKS))}); refusing to build it"
        )
    nested = [p for k, v in cfg.items() if k != "_target_" for p in _directives({k: v}, what)]
    if nested:
        raise ValueError(f"voice2face: {what}: Hydra directives inside a network config are refused: {nested}")


def build_network(cfg, what: str, **fill):
    """The network of `cfg` with the values the data decides filled in, after `check_network_config`."""
    check_network_config(cfg, what)
    return hydra.utils.instantiate({**cfg, **fill}, _convert_="all", _recursive_=False)


def check_arguments(cls, kwargs: dict, what: str, fix: str = "use the version that wrote it") -> None:
    """ValueError naming the arguments `cls` does not take and those it needs but lacks: a checkpoint of another
    voice2face version would otherwise stop with a TypeError traceback."""
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(kwargs) - set(params))
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    missing = [n for n in missing if n not in kwargs]
    problems = [f"does not take {unknown}"] * bool(unknown) + [f"needs {missing}"] * bool(missing)
    if problems:
        raise ValueError(
            f"{what}: {cls.__name__} of this voice2face version {' and '.join(problems)} (a checkpoint of "
            f"another version?); {fix}"
        )


def plain_config(cfg):
    """DictConfig/ListConfig -> plain dict/list (a copy): hyper-parameters and checkpoints hold plain types only."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)
