"""Where the voice enters the generator: `model.latent_space`.

    z      the embedding is the mapping's input z (the paper's 64 px model; one w broadcast to every layer);
    w      a learned head maps the embedding to one w for all layers, bypassing the mapping;
    wplus  a head maps it to one w per layer, [num_ws, w_dim] (14 x 512 at 256 px, 18 x 512 at 1024 px: the
           paper's §3.3 with a pretrained StyleGAN2).

The head stands in for `G.mapping` (same call, same attributes), so style mixing, path length, truncation and
the EMA copy work on it unchanged. It keeps the generator's own mapping as `prior` (an unconditional G for
export and the projector) and starts every output at the prior's mean w (`w_anchor`): with a pretrained G the
first faces are its average face and the head learns offsets from it (or, by `set_output`, from a linear read of
the voice: model.latent_init_ridge). `w_avg`, the truncation centre, is then
tracked over the head's outputs as NVlabs tracks the mapping's: the mean face of the voices.
"""

import torch
from torch import nn

from lightning_modules.nets.stylegan2 import FullyConnectedLayer, MappingNetwork, normalize_2nd_moment

LATENT_SPACES = ("z", "w", "wplus")


class VoiceLatent(nn.Module):
    def __init__(
        self,
        prior: MappingNetwork,  # The generator's mapping: gives w_dim, num_ws and the anchor w.
        z_dim: int,  # Voice embedding (‖ noise) dimensionality.
        space: str = "wplus",  # w: one w for all layers | wplus: one per layer.
        num_layers: int = 2,  # FC layers of the head (lrelu), then a linear output layer.
        lr_multiplier: float = 1.0,  # Unlike the mapping's 0.01: the voice path should learn at Adam's rate.
        out_scale: float = 0.1,  # Initial scale of the output layer: offsets start small around the anchor.
        impl: str = "auto",
    ):
        super().__init__()
        if space not in ("w", "wplus"):
            raise ValueError(f"VoiceLatent: space must be 'w' or 'wplus', got {space!r}")
        self.prior, self.space = prior, space
        self.z_dim, self.w_dim, self.num_ws = z_dim, prior.w_dim, prior.num_ws
        self.w_avg_beta, self.num_layers = prior.w_avg_beta, num_layers
        features = [z_dim] + [self.w_dim] * num_layers
        for idx in range(num_layers):
            fc = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", fc)
        outputs = self.w_dim * (self.num_ws if space == "wplus" else 1)
        self.out = FullyConnectedLayer(features[-1], outputs, lr_multiplier=lr_multiplier, impl=impl)
        with torch.no_grad():
            self.out.weight.mul_(out_scale)
        self.register_buffer("w_anchor", prior.w_avg.detach().clone())
        self.register_buffer("w_avg", prior.w_avg.detach().clone())

    def features(self, z):
        """z [N, z_dim] -> what the output layer reads [N, w_dim] (or z normalised, with no FC layers)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"VoiceLatent: expects z [N, {self.z_dim}], got {list(z.shape)}")
        x = normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x

    def offsets(self, ws):
        """What the output layer must give for `ws` (w: [N, w_dim]; wplus: [N, num_ws, w_dim]): [N, outputs]."""
        rows = self.num_ws if self.space == "wplus" else 1
        assert ws.shape[-1] == self.w_dim and ws[0].numel() == rows * self.w_dim, list(ws.shape)
        return (ws.reshape(len(ws), rows, self.w_dim) - self.w_anchor.to(ws.dtype)).reshape(len(ws), -1)

    @torch.no_grad()
    def set_output(self, weight, bias) -> None:
        """The output layer as the plain linear map features @ weight [w_dim, outputs] + bias [outputs] (in its
        equalised-lr parametrisation): e.g. a ridge read of the voices' targets (model.latent_init_ridge)."""
        assert list(weight.shape) == [self.out.in_features, self.out.out_features], list(weight.shape)
        self.out.weight.copy_(weight.T / self.out.weight_gain)
        self.out.bias.copy_(bias / self.out.bias_gain)

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        """z [N, z_dim] -> ws [N, num_ws, w_dim], as MappingNetwork.forward."""
        ws = self.w_anchor + self.out(self.features(z)).reshape(z.shape[0], -1, self.w_dim)
        if update_emas:
            self.w_avg.copy_(ws.detach().mean(dim=[0, 1]).lerp(self.w_avg, self.w_avg_beta))
        ws = ws.expand(-1, self.num_ws, -1) if self.space == "w" else ws
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cutoff], truncation_psi), ws[:, cutoff:]], dim=1)
        return ws.contiguous()


def unconditional(G) -> nn.Module:
    """The mapping a G had before a voice head took its place (the G itself is unchanged)."""
    return G.mapping.prior if isinstance(G.mapping, VoiceLatent) else G.mapping
