"""A Voice2FaceGAN's latent targets, the speakers' faces projected into W (or W+) of its generator
(model.latent_targets): read into the model for the latent pull (model.latent_weight), and the voice head's
ridge start from them (model.latent_init_ridge). Both are deviations from the paper that the config names."""

import logging

import torch

from lightning_modules.io.latent_targets import layer_mean_share, read_latent_targets
from lightning_modules.metrics.voice import ridge_solve, train_voices

log = logging.getLogger(__name__)


def load_latent_targets(model, names: list[str]) -> None:
    """model.w_targets [num_classes, num_ws, w_dim] from model.latent_targets for the training identities `names`
    (label order); a speaker without a file is left out of the latent loss (lightning_modules.io.latent_targets)."""
    hp = model.hparams
    targets, mask = read_latent_targets(str(hp.latent_targets), names, (model.G.num_ws, model.G.mapping.w_dim))
    log.info("voice2face: latent targets for %d of %d training identities", int(mask.sum()), len(names))
    share = layer_mean_share(targets, mask) if hp.latent_space == "w" else 1.0
    if share < 0.9:  # a fact to know, not an error: such targets still steer colour and sex (docs/face_prior.md)
        log.info(
            "voice2face: model.latent_space=w pulls one w toward the layer mean of these W+ targets, which keeps "
            f"{share:.0%} of their between-speaker variance; targets projected in W keep all of it "
            "(python -m experiments.latent_targets space=w)"
        )
    model.w_targets, model.w_target_mask = targets.to(model.device), mask.to(model.device)


@torch.no_grad()
def ridge_head(model, datamodule, seed: int = 0) -> None:
    """The voice head's output layer (G's and G_ema's) at model.latent_init_ridge's ridge read: the train voices of
    one pass of the train loader (drawn under `seed`, the process' random state put back) regressed on their
    speakers' targets, speakers without one left out. Needs load_latent_targets first."""
    emb, labels = train_voices(model, datamodule, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.latent(emb)  # the noise part, if any, is drawn as in training: the fit learns to ignore it
    keep = model.w_target_mask.cpu()[labels]
    targets = model.w_targets.cpu()[labels[keep]]
    targets = targets.mean(1) if model.hparams.latent_space == "w" else targets  # the latent loss' optimum for one w
    head = model.G.mapping
    head.set_output(*ridge_solve(head.features(z[keep]), head.offsets(targets), model.hparams.latent_init_ridge))
    model.G_ema.mapping.load_state_dict(head.state_dict())
    log.info("voice2face: the voice head starts at the ridge read of %d train utterances", int(keep.sum()))
