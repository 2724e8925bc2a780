"""Voice2FaceLoss: the losses of the four training phases on one micro-batch, backwarded (NVlabs `StyleGAN2Loss`).

    Gmain  NS logistic loss through D + identity cross-entropy of D's classifier on the generated faces (+ the
           deviations the config names: L1, colour, LPIPS or latent pull toward the speaker)
    Greg   path-length penalty on the generator inputs of Gmain
    Dmain  NS logistic loss on real and generated faces + classifier cross-entropy on the real faces
    Dreg   R1 penalty on real faces

`Voice2FaceGAN.training_step` drives them: zero, `accumulate_gradients` for each micro-batch, NaN guard, step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.losses import ns_discriminator_loss, ns_generator_loss, path_lengths, r1_penalty
from lightning_modules.ranks import mean_over_ranks_

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")


def colour_distance(fake: Tensor, real: Tensor, size: int) -> Tensor:
    """Per-sample mean squared difference of two face batches [B, 3, S, S] average-pooled to [B, 3, size, size]:
    skin, hair and background colour where they lie, but no stroke of eyes or mouth (what made L1 draw a template)."""
    assert fake.shape == real.shape and fake.shape[-1] % size == 0, (fake.shape, real.shape, size)
    k = fake.shape[-1] // size
    return (F.avg_pool2d(fake, k) - F.avg_pool2d(real, k)).square().mean(dim=(1, 2, 3))


class Voice2FaceLoss:
    def __init__(self, model):  # the Voice2FaceGAN it trains: networks, pl_mean, latent targets and settings
        self.model = model

    def accumulate_gradients(self, phase: str, mb: dict, gain: float) -> tuple[Tensor, dict]:
        """Backward `phase`'s loss on micro-batch `mb` (audio, lengths, real, label, z), times `gain` (the lazy
        interval) and over the micro-batches of the step; returns (that loss, detached; its statistics). Gmain
        writes mb["z"], the generator inputs (detached) that the later phases reuse."""
        assert phase in PHASES, phase
        loss, stats = getattr(self, f"_{phase}")(mb)
        loss = loss * gain
        k = self.model.hparams.accumulate
        self.model.manual_backward(loss / k if k > 1 else loss)  # always: under DDP every rank joins the all-reduce
        return loss.detach(), stats

    def run_G(self, z: Tensor, update_emas: bool = False):
        """Generate with style mixing (NVlabs `run_G`). Returns (img, ws); ws is None without a mapping."""
        model, hp = self.model, self.model.hparams
        if not model.has_mapping:
            return model.G(z), None
        ws = model.G.mapping(z, update_emas=update_emas)
        if hp.style_mixing_prob > 0 and ws.shape[1] > 1:
            cutoff = int(torch.randint(1, ws.shape[1], []))
            if float(torch.rand([])) >= hp.style_mixing_prob:
                cutoff = ws.shape[1]
            # The second latent: another voice of the batch, or the same voice (each with fresh noise). With
            # noise_z_dim = 0 the same voice gives the same w, so `self` mixing changes nothing then.
            emb, noise = z[:, : model.embed_dim], z[:, model.embed_dim :]
            if hp.style_mixing_source == "batch":
                emb = emb.roll(1, dims=0)
            z2 = torch.cat([emb, torch.randn_like(noise)], dim=1)
            ws[:, cutoff:] = model.G.mapping(z2, update_emas=False)[:, cutoff:]
        return model.G.synthesis(ws), ws

    def latent_loss(self, ws: Tensor, label: Tensor) -> Tensor:
        """Mean squared distance per w between `ws` [B, num_ws, w_dim] and the speakers' targets, over the
        speakers that have one (zero where none in the batch has)."""
        has = self.model.w_target_mask[label]
        if not bool(has.any()):
            return ws.sum() * 0
        return (ws.float()[has] - self.model.w_targets[label[has]]).square().sum(-1).mean()

    def _Gmain(self, mb):
        model, hp = self.model, self.model.hparams
        with model.autocast():
            emb = model.embed(mb["audio"], mb["lengths"])
        z = model.latent(emb.float())
        mb["z"] = z.detach()
        with model.autocast():
            img, ws = self.run_G(z)
            logits, class_logits = model.D(img)
        loss_adv = ns_generator_loss(logits.float()).mean()
        loss = loss_adv
        stats = {"loss/G_adv": loss_adv.detach()}
        if hp.recon_weight > 0:
            loss_rec = (img.float() - mb["real"]).abs().mean()
            loss = loss + hp.recon_weight * loss_rec
            stats["loss/G_recon"] = loss_rec.detach()
        if hp.colour_weight > 0:
            loss_col = colour_distance(img.float(), mb["real"], hp.colour_size).mean()
            loss = loss + hp.colour_weight * loss_col
            stats["loss/G_colour"] = loss_col.detach()
        if model.perceptual:
            lpips = model.perceptual[0] = model.perceptual[0].to(img.device)
            loss_lpips = lpips(img.float(), mb["real"]).mean()
            loss = loss + hp.perceptual_weight * loss_lpips
            stats["loss/G_lpips"] = loss_lpips.detach()
        if hp.latent_weight > 0:
            loss_w = self.latent_loss(ws, mb["label"])
            loss = loss + hp.latent_weight * loss_w
            stats["loss/G_latent"] = loss_w.detach()
        if class_logits is not None and hp.id_weight > 0:
            loss_id = F.cross_entropy(class_logits.float(), mb["label"])
            loss = loss + hp.id_weight * loss_id
            stats["loss/G_id"] = loss_id.detach()
        return loss, stats

    def _Greg(self, mb):
        model, hp = self.model, self.model.hparams
        with model.autocast():
            img, ws = self.run_G(mb["z"])
        lengths = path_lengths(img.float(), ws)
        batch_mean = mean_over_ranks_(lengths.mean().detach())  # keeps pl_mean identical on every rank
        pl_mean = model.pl_mean.lerp(batch_mean, hp.pl_decay)
        # A non-finite batch (its step is skipped) must not poison the running mean.
        model.pl_mean.copy_(torch.where(torch.isfinite(pl_mean), pl_mean, model.pl_mean).detach())
        penalty = (lengths - pl_mean).square()
        # img[:, 0, 0, 0] * 0 ties every synthesis parameter into the graph (as NVlabs does for DDP).
        loss = (img[:, 0, 0, 0].float() * 0 + penalty * hp.pl_weight).mean()
        return loss, {"reg/pl_penalty": penalty.mean().detach()}

    def _Dmain(self, mb):
        model, hp = self.model, self.model.hparams
        with torch.no_grad(), model.autocast():
            fake, _ = self.run_G(mb["z"], update_emas=True)
        with model.autocast():
            fake_logits, _ = model.D(fake)
            real_logits, class_logits = model.D(mb["real"])
        loss_real, loss_fake = ns_discriminator_loss(real_logits.float(), fake_logits.float())
        loss = loss_real.mean() + loss_fake.mean()
        stats = {"loss/D_real": loss_real.mean().detach(), "loss/D_fake": loss_fake.mean().detach()}
        if class_logits is not None and hp.cls_weight > 0:
            loss_cls = F.cross_entropy(class_logits.float(), mb["label"])
            loss = loss + hp.cls_weight * loss_cls
            stats["loss/D_cls"] = loss_cls.detach()
            stats["acc/D_cls_real"] = (class_logits.argmax(1) == mb["label"]).float().mean()
        return loss, stats

    def _Dreg(self, mb):
        model = self.model
        real = mb["real"].detach().requires_grad_(True)
        with model.autocast():
            logits, _ = model.D(real)
        penalty = r1_penalty(real, logits.float())
        loss = (logits.float() * 0 + penalty * (model.hparams.r1_gamma / 2)).mean()
        return loss, {"reg/r1": penalty.mean().detach()}
