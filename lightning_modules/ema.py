"""G_ema: NVlabs' moving average of the generator's weights, the network every figure and sample is drawn from."""

import torch


def ema_beta(batch_size, cur_nimg, ema_kimg, ema_rampup=None):
    """Per-step EMA decay: the average keeps half its weight after `ema_kimg` thousand images.

    With a ramp-up the half-life is capped at cur_nimg * ema_rampup, so early averages forget quickly.
    """
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """One step of the average: each weight moves to G's by (1 - beta); buffers (w_avg, filters) are G's own."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
