"""The face prior: an unconditional StyleGAN2 (G, D, G_ema) trained on faces alone, NVlabs' `training/loss.py`
and `training_loop.py` semantics on our networks.

It plays the pretrained FFHQ generator's role for the embedded corpus: `make face-prior` trains it on the
identities of `datamodules.synthetic.face_set`, and the main job maps voices into its W+
(`model.generator_init`). One training step runs the four phases of NVlabs' loop in the order written in
`FacePriorTrainer.step`: Gmain, Greg (lazy path length), Dmain, Dreg (lazy R1), then the EMA.
"""

from __future__ import annotations

import copy

import torch

from lightning_modules.ema import ema_beta, update_ema
from lightning_modules.losses import (
    lazy_adam_kwargs,
    ns_discriminator_loss,
    ns_generator_loss,
    nvlabs_r1_gamma,
    path_lengths,
    r1_penalty,
)
from lightning_modules.nets.stylegan2 import Discriminator, Generator


class UnconditionalLoss:
    """NVlabs' StyleGAN2Loss without labels: non-saturating logistic loss, lazy R1 on reals, lazy path length."""

    def __init__(
        self,
        G: Generator,
        D: Discriminator,
        r1_gamma: float,  # R1 weight
        pl_weight: float = 2.0,  # path-length weight (0: off)
        pl_batch_shrink: int = 2,  # path length on batch // shrink samples
        pl_decay: float = 0.01,  # decay of the running mean path length
        style_mixing_prob: float = 0.9,  # NVlabs default
    ):
        self.G, self.D = G, D
        self.r1_gamma, self.pl_weight, self.pl_batch_shrink, self.pl_decay = (
            r1_gamma,
            pl_weight,
            pl_batch_shrink,
            pl_decay,
        )
        self.style_mixing_prob = style_mixing_prob
        self.pl_mean = torch.zeros([], device=next(G.parameters()).device)

    def run_G(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, update_emas=True)
        if self.style_mixing_prob > 0:  # a second z takes the layers from a random cutoff on
            cutoff = int(torch.randint(1, ws.shape[1], []))
            cutoff = cutoff if float(torch.rand([])) < self.style_mixing_prob else ws.shape[1]
            ws = ws.clone()
            # drawn by the CPU generator on every device, as z is: one latent stream whatever trains it
            ws[:, cutoff:] = self.G.mapping(torch.randn(z.shape).to(z.device))[:, cutoff:]
        return self.G.synthesis(ws), ws

    def accumulate_gradients(self, phase: str, real: torch.Tensor, z: torch.Tensor, gain: float) -> dict[str, float]:
        """Backward the loss of `phase` (Gmain | Greg | Dmain | Dreg), scaled by `gain` (the lazy interval)."""
        assert phase in ("Gmain", "Greg", "Dmain", "Dreg"), phase
        stats = {}
        if phase == "Gmain":
            img, _ = self.run_G(z)
            loss = ns_generator_loss(self.D(img)[0]).mean()
            stats["loss/G"] = float(loss.detach())
            (loss * gain).backward()
        elif phase == "Greg":
            batch = max(z.shape[0] // self.pl_batch_shrink, 1)
            img, ws = self.run_G(z[:batch])
            lengths = path_lengths(img, ws)
            self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), self.pl_decay)
            penalty = (lengths - self.pl_mean).square().mean() * self.pl_weight
            stats["pl/length"] = float(lengths.mean().detach())
            # img[:, 0, 0, 0] * 0 keeps the synthesis in the graph as NVlabs does (DDP: every parameter gets a grad)
            ((penalty + img[:, 0, 0, 0].mean() * 0) * gain).backward()
        elif phase == "Dmain":
            with torch.no_grad():
                fake, _ = self.run_G(z)
            real_part, fake_part = ns_discriminator_loss(self.D(real)[0], self.D(fake)[0])
            loss = real_part.mean() + fake_part.mean()
            stats["loss/D"] = float(loss.detach())
            (loss * gain).backward()
        else:
            real = real.detach().requires_grad_(True)
            logits = self.D(real)[0]
            penalty = r1_penalty(real, logits).mean() * (self.r1_gamma / 2)
            stats["r1/penalty"] = float(penalty.detach())
            ((penalty + logits.mean() * 0) * gain).backward()
        return stats


class FacePriorTrainer:
    """G, D, G_ema and their Adam optimisers, stepped one batch of real faces at a time."""

    def __init__(
        self,
        img_resolution: int = 64,  # face side, pixels
        z_dim: int = 256,  # latent z (= w) dimensionality
        mapping_layers: int = 4,  # FC layers of the mapping network
        channel_base: int = 8192,  # channels at resolution r: min(channel_base // r, channel_max), G and D
        channel_max: int = 256,
        use_noise: bool = True,  # per-pixel noise inputs (NVlabs)
        lr: float = 0.0025,  # NVlabs' Adam
        G_lr: float | None = None,  # G's own lr (StyleGAN3's --glr); None: lr
        betas: tuple[float, float] = (0.0, 0.99),
        r1_gamma: float | None = None,  # None: NVlabs' rule 0.0002 * res² / batch
        batch_size: int = 32,
        pl_weight: float = 2.0,
        style_mixing_prob: float = 0.9,
        G_reg_interval: int = 4,  # lazy path length (NVlabs)
        D_reg_interval: int = 16,  # lazy R1 (NVlabs)
        ema_kimg: float = 10.0,  # G_ema half-life, thousands of images
        ema_rampup: float | None = 0.05,
        impl: str = "auto",  # kernels implementation
        device: str = "cpu",  # where G, D and G_ema train ("cuda": a GPU; latents are drawn on the CPU either way)
    ):
        self.kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.G = Generator(
            z_dim=z_dim,
            w_dim=z_dim,
            img_resolution=img_resolution,
            mapping_layers=mapping_layers,
            channel_base=channel_base,
            channel_max=channel_max,
            use_noise=use_noise,
            impl=impl,
        ).to(self.device)
        self.D = Discriminator(
            img_resolution=img_resolution, channel_base=channel_base, channel_max=channel_max, impl=impl
        ).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        gamma = nvlabs_r1_gamma(img_resolution, batch_size) if r1_gamma is None else r1_gamma
        self.loss = UnconditionalLoss(self.G, self.D, gamma, pl_weight, style_mixing_prob=style_mixing_prob)
        self.intervals = {"G": G_reg_interval, "D": D_reg_interval}
        lrs = {"G": lr if G_lr is None else G_lr, "D": lr}
        self.opt = {
            net: torch.optim.Adam(model.parameters(), **lazy_adam_kwargs(lrs[net], betas, self.intervals[net]))
            for net, model in (("G", self.G), ("D", self.D))
        }
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.cur_nimg, self.batch_idx = 0, 0

    def step(self, real: torch.Tensor) -> dict[str, float]:
        """One batch [N, 3, R, R] in [-1, 1] through every phase due at this step; returns their statistics."""
        assert real.ndim == 4 and real.shape[0] == self.batch_size, f"real: {list(real.shape)}"
        real = real.to(self.device)
        stats = {}
        phases = (
            ("Gmain", "G", 1),
            ("Greg", "G", self.intervals["G"]),
            ("Dmain", "D", 1),
            ("Dreg", "D", self.intervals["D"]),
        )
        for phase, net, interval in phases:
            off = (phase == "Greg" and self.loss.pl_weight == 0) or (phase == "Dreg" and self.loss.r1_gamma == 0)
            if off or interval <= 0 or self.batch_idx % interval:
                continue
            model = self.G if net == "G" else self.D
            model.requires_grad_(True)
            self.opt[net].zero_grad(set_to_none=True)
            z = torch.randn([self.batch_size, self.G.z_dim]).to(self.device)
            stats.update(self.loss.accumulate_gradients(phase, real, z, gain=interval))
            for p in model.parameters():  # NVlabs: non-finite gradients become zeros, not a lost run
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            self.opt[net].step()
            model.requires_grad_(False)
        self.cur_nimg += self.batch_size
        self.batch_idx += 1
        update_ema(self.G_ema, self.G, ema_beta(self.batch_size, self.cur_nimg, self.ema_kimg, self.ema_rampup))
        return stats

    def state_dict(self) -> dict:
        return {
            "kwargs": self.kwargs,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt["G"].state_dict(),
            "opt_D": self.opt["D"].state_dict(),
            "pl_mean": self.loss.pl_mean,
            "cur_nimg": self.cur_nimg,
            "batch_idx": self.batch_idx,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        for net, opt in self.opt.items():
            # the saved moments at this run's lrs, not the saved ones: a resume may change them (docs/face_prior.md)
            lrs = [group["lr"] for group in opt.param_groups]
            opt.load_state_dict(state[f"opt_{net}"])
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr
        self.loss.pl_mean = state["pl_mean"].to(self.device)
        self.cur_nimg, self.batch_idx = int(state["cur_nimg"]), int(state["batch_idx"])
