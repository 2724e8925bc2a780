"""Loss and regulariser terms of StyleGAN2 training (NVlabs `training/loss.py` semantics).

Each function returns per-sample values; the caller takes the mean and multiplies by the lazy interval.
"""

import math

import torch
import torch.nn.functional as F


def ns_generator_loss(fake_logits):
    """Non-saturating logistic loss for G: softplus(-D(G(z)))."""
    return F.softplus(-fake_logits)


def ns_discriminator_loss(real_logits, fake_logits):
    """Non-saturating logistic loss for D as (real, fake) parts: softplus(-D(x)), softplus(D(G(z)))."""
    return F.softplus(-real_logits), F.softplus(fake_logits)


def r1_penalty(real_img, real_logits):
    """Squared gradient norm of D's logits w.r.t. the real images, per sample: sum over C, H, W of (dD/dx)^2.

    `real_img` must require grad and `real_logits` must come from it; the graph is kept for the backward pass.
    """
    (grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img], create_graph=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(img, ws):
    """Path lengths |J_w^T y| of the synthesis at `ws`, with y ~ N(0, I) / sqrt(H*W), per sample.

    img: [N, C, H, W] produced from ws: [N, num_ws, w_dim].
    Returns [N] = sqrt(mean over ws of sum over w_dim of g^2).
    """
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


def nvlabs_r1_gamma(resolution: int, batch_size: int) -> float:
    """NVlabs' R1 weight for a face size and batch (stylegan2-ada-pytorch's heuristic): 0.0002 · res² / batch."""
    return 0.0002 * resolution**2 / batch_size


def lazy_adam_kwargs(lr, betas, reg_interval):
    """Adam settings for a network whose regulariser runs every `reg_interval` steps.

    Over one interval there are I + 1 optimizer steps instead of I, so lr and betas are re-scaled by
    c = I / (I + 1).
    Without a lazy regulariser (interval None or <= 0) they are unchanged.
    """
    if not reg_interval or reg_interval <= 0:
        return {"lr": lr, "betas": tuple(betas)}
    c = reg_interval / (reg_interval + 1)
    return {"lr": lr * c, "betas": tuple(beta**c for beta in betas)}
