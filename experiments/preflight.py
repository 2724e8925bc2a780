"""A Hydra callback that refuses a training run before Hydra makes its run folder (`hydra/default.yaml`).

Hydra writes `<run dir>/.hydra/` and the log before the task starts, so a run refused for its settings or its
generator file left an empty run folder behind, and a run folder that cannot be made (a read-only place, a name past
the file system's limit) ended in Hydra's traceback. `on_run_start` comes first: it checks the folder and makes
every refusal of `check_before_folder`, as one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.cli_errors import one_line_errors
from datamodules.files import unwritable_reason
from experiments.schema import check_config
from lightning_modules import weights
from lightning_modules.io.build import build_network
from lightning_modules.io.generator_init import check_trunk, load_generator_init


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        one_line_errors(check)(config)


def check(config: DictConfig) -> None:
    run_dir = Path(str(config.hydra.run.dir))  # Hydra's run.dir, before Hydra resolves it into runtime.output_dir
    reason = unwritable_reason(run_dir)
    if reason:
        raise OSError(
            f"hydra.run.dir={run_dir}: cannot be made ({reason}); choose another hydra.run.dir or paths.root_dir"
        )
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    with open_dict(task):
        task.paths.output_dir = str(run_dir)  # `${hydra:runtime.output_dir}` is not set until the run starts
    check_before_folder(task)


def check_before_folder(cfg: DictConfig) -> None:
    """Every refusal that needs no run folder, made before one is written (by Preflight before Hydra makes it,
    and by experiments.run.train): the settings, the accelerator, and a pretrained generator file with its D."""
    check_config(cfg)
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # else Lightning says so after stage 1
        raise ValueError(
            f"config: trainer.accelerator={accelerator}, but this machine has no CUDA GPU that torch can use; "
            "use trainer=cpu"
        )
    if cfg.get("pretrain_encoder") and cfg.model.get("encoder_ckpt"):
        raise ValueError(
            f"config: model.encoder_ckpt={cfg.model.encoder_ckpt} is given, and pretrain_encoder would train the "
            "encoder again (stage 1); pass ~pretrain_encoder to start from your file"
        )
    if cfg.model.get("generator_init") and cfg.model._target_.endswith("Voice2FaceGAN") and not moved_away(cfg):
        check_generator_init(cfg)
    uses_targets = cfg.model.get("latent_weight", 0) > 0 or cfg.model.get("latent_init_ridge") is not None
    if uses_targets and cfg.model.get("latent_targets"):  # a resume reads them too
        check_latent_targets(cfg.model.latent_targets)


def moved_away(cfg: DictConfig) -> bool:
    """A resume whose model.generator_init file has moved since the run began. It needs nothing from the file:
    the checkpoint holds the G and D it gave (experiments.run reads them from there)."""
    init = cfg.model.get("generator_init")
    return bool(cfg.get("ckpt_path") and init and init not in weights.SHIPPED and not os.path.lexists(init))


def check_generator_init(cfg: DictConfig) -> None:
    """A wrong model.generator_init must fail before stage 1 trains or any folder is written, its D too: the D its
    arguments build (one class for the identity head, which is not checked) takes it. The model reads the file once
    more; a file already checked in this process (same path, size and time) is not read twice here."""
    path = cfg.model.generator_init
    file = weights.file_of(path)
    info = os.stat(file) if file.is_file() else None
    key = (os.path.abspath(file), cfg.data.face_size, info and (info.st_size, info.st_mtime_ns))
    if info is not None and key in _CHECKED_INITS:
        return
    _, d_kwargs, trunk = load_generator_init(path, cfg.data.face_size)
    if trunk is not None:
        discriminator = {**OmegaConf.to_container(cfg.model.discriminator, resolve=True), **d_kwargs}
        D = build_network(discriminator, "model.discriminator", img_resolution=cfg.data.face_size, num_classes=1)
        check_trunk(D, trunk, path)
    _CHECKED_INITS.add(key)


_CHECKED_INITS: set = set()


def check_latent_targets(source: str) -> None:
    """model.latent_targets must be there (a shipped one unchanged) before stage 1 trains; its contents are read
    against the training speakers whenever stage 2 starts or resumes (the checkpoint does not hold them)."""
    path = weights.resolve(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: model.latent_targets is missing; write it with python -m experiments.latent_targets "
            "(or experiments.project), or give the shipped name face_prior_64_targets"
        )
