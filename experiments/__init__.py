"""The commands (`python -m experiments.<name>`) and their Hydra configs (`experiments/conf/`)."""

from omegaconf import OmegaConf

from lightning_modules.losses import nvlabs_r1_gamma

# `${r1_rule:${data.face_size},${data.batch_size}}`: NVlabs' R1 weight worked out from the settings it depends on,
# so a face size or batch given on the command line changes it too. data.batch_size is one process's batch: under DDP
# NVlabs' rule takes the global batch, so set model.r1_gamma yourself there.
OmegaConf.register_new_resolver("r1_rule", nvlabs_r1_gamma, replace=True)
