"""Shared test helpers: compose the real Hydra configs the way `python -m experiments.run` does, and a quiet
Lightning Trainer for tests and benches that fit a module directly, and NVlabs network pickles written without
NVlabs' code."""

from __future__ import annotations

import collections
import copy
import functools
import pickle
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

import experiments  # noqa: F401  (registers the configs' resolvers, as every command does)
from lightning_modules.metrics.settings import MetricsSettings, ProbeSettings

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments/conf/exp").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (ROOT / "experiments/conf/data").glob("*.yaml"))


@functools.cache
def _composed(name: str, overrides: tuple[str, ...]) -> DictConfig:
    """Config `name` with these overrides and Hydra's own section, composed once per test session (read-only:
    every caller gets a copy)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _as_run(name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """A copy of the composed config as it runs: Hydra's runtime set (`${hydra:...}` resolves; without it a config
    that interpolates the run folder passed or failed by test order), its own section removed, the run folder set
    to `output_dir` where given."""
    cfg = copy.deepcopy(_composed(name, tuple(overrides)))
    OmegaConf.set_readonly(cfg, False)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def compose_train(overrides: list[str], output_dir: Path):
    """The composed `train` config with its run folder set to `output_dir` (as Hydra would at run time)."""
    return _as_run("train", overrides, output_dir)


def compose_command(name: str, overrides: list[str]) -> DictConfig:
    """A command's composed config (generate, evaluate, face_prior, ...) as it runs."""
    return _as_run(name, overrides)


def _merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, key by key in nested dicts; keys `base` lacks are kept, so that the settings
    refuse them (OmegaConf.merge cannot hold the stand-in modules some tests pass)."""
    return {
        k: _merged(v, changes[k]) if isinstance(v, dict) and k in changes else changes.get(k, v)
        for k, v in base.items()
    } | {k: v for k, v in changes.items() if k not in base}


def metrics_settings(**sections) -> MetricsSettings:
    """The `metrics` group as a run composes it, with `sections` merged in (nested dicts key by key; values may be
    objects YAML cannot hold, e.g. a stand-in nn.Module for `fid.feature`)."""
    defaults = OmegaConf.to_container(_composed("train", ()).metrics, resolve=True)
    return MetricsSettings.of(_merged(defaults, sections))


def quiet_trainer(root_dir, **kwargs) -> Trainer:
    """A one-device CPU Trainer without logger, checkpointing, progress bar or model summary, writing under
    `root_dir`; `kwargs` (max_epochs, callbacks, devices, strategy, accelerator, ...) override."""
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    return Trainer(**{**settings, **kwargs})


@pytest.fixture
def empty_hub(tmp_path):
    """A torch hub folder without any weights (LPIPS, metric networks), whatever this machine has, so that the
    commands fall back as they do on a fresh machine."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(*overrides: str):
        return compose_train(list(overrides), tmp_path / "run")

    return _compose


# An NVlabs network pickle is written with `torch_utils.persistence`: each module pickles as
# `_reconstruct_persistent_obj(meta)` with its source code in meta["module_src"]. These stand-ins let the
# tests write such a pickle without NVlabs' code; the importer must rebuild it without running anything
# from it.


def _reconstruct_persistent_obj(meta):
    raise AssertionError("only used to name the global when pickling")


_WRAPPERS = weakref.WeakKeyDictionary()  # module -> its Persisted: a module shared by two parents pickles once


def _persisted(module, module_src):
    if module is None:
        return None
    if module not in _WRAPPERS:
        _WRAPPERS[module] = Persisted(module, None, module_src)
    return _WRAPPERS[module]


class Persisted:
    """A module pickled as NVlabs' persistence pickles it (its source in meta['module_src'], never run)."""

    def __init__(self, module, init_kwargs=None, module_src="raise SystemExit('module_src was executed')"):
        self.module, self.init_kwargs, self.module_src = module, init_kwargs, module_src

    def __reduce__(self):
        m = self.module
        state = {
            "training": False,
            "_parameters": collections.OrderedDict(m._parameters),
            "_buffers": collections.OrderedDict(m._buffers),  # NVlabs keeps resample filters persistent
            "_modules": collections.OrderedDict((k, _persisted(c, self.module_src)) for k, c in m._modules.items()),
            "_init_args": (),
            "_init_kwargs": self.init_kwargs or {},
        }
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(m).__name__, state=state)
        return _reconstruct_persistent_obj, (meta,)


@pytest.fixture
def nvlabs_modules(monkeypatch):
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, mod in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("dnnlib", types.ModuleType("dnnlib")),
        ("dnnlib.util", util),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    return util


def write_nvlabs_pickle(path, G, channel_base: int, channel_max: int, easydict) -> None:
    """A network pickle of `G` (z = w = 8 dims, 16 px, 2 mapping layers) as NVlabs' training writes one: G and
    G_ema persisted with their init_kwargs, no D, training_set_kwargs an EasyDict (`easydict`: nvlabs_modules')."""
    kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2})
    kwargs["synthesis_kwargs"] = {"channel_base": channel_base, "channel_max": channel_max}
    networks = {"G": Persisted(G, kwargs), "D": None, "G_ema": Persisted(G, kwargs), "augment_pipe": None}
    with open(path, "wb") as f:
        pickle.dump({**networks, "training_set_kwargs": easydict(resolution=16)}, f)


def probe_settings(**changes) -> ProbeSettings:
    """The shipped `metrics.probe` settings with `changes`."""
    return metrics_settings(probe=changes).probe
