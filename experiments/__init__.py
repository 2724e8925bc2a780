"""The commands (`python -m experiments.<name>`) and their Hydra configs (`experiments/conf/`)."""

import importlib

from omegaconf import OmegaConf

from lightning_modules.losses import nvlabs_r1_gamma

# `${r1_rule:${data.face_size},${data.batch_size}}`: NVlabs' R1 weight worked out from the settings it depends on,
# so a face size or batch given on the command line changes it too. data.batch_size is one process's batch: under DDP
# NVlabs' rule takes the global batch, so set model.r1_gamma yourself there.
OmegaConf.register_new_resolver("r1_rule", nvlabs_r1_gamma, replace=True)


def allowed_values(dotted: str) -> list:
    """`${one_of:package.module.NAME}`: the values a setting may take, read from the code that acts on them (a tuple,
    or a dict's keys), so that the schema (conf/schema.yaml) and the code hold one list."""
    module, name = dotted.rsplit(".", 1)
    return list(getattr(importlib.import_module(module), name))


OmegaConf.register_new_resolver("one_of", allowed_values, replace=True)
