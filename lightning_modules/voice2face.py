"""Voice2FaceGAN: an audio encoder conditions a StyleGAN2 generator; D shares its trunk with an identity
classifier. Training follows NVlabs stylegan2-ada-pytorch with manual optimisation: `training_step` runs the phases
of `voice2face_loss` (Gmain, Greg every G_reg_interval, Dmain, Dreg every D_reg_interval), then the EMA of G.
Budgets are in images (`cur_nimg`), not `trainer.global_step`, which counts every optimizer step.
"""

import contextlib
import copy
import logging
import time

import torch
from lightning import LightningModule

from datamodules.faces import mean_face
from lightning_modules.callbacks.checkpoint import BadStepsError
from lightning_modules.ema import ema_beta, update_ema
from lightning_modules.encoder_pretrain import load_encoder_weights
from lightning_modules.io.build import build_network, plain_config
from lightning_modules.io.generator_init import check_trunk, load_generator_init
from lightning_modules.losses import lazy_adam_kwargs
from lightning_modules.metrics.ppl import LPIPSDistance
from lightning_modules.metrics.weights import MetricUnavailable
from lightning_modules.nets.latent import LATENT_SPACES, VoiceLatent
from lightning_modules.ranks import average_buffers_across_ranks, distributed
from lightning_modules.voice2face_loss import Voice2FaceLoss
from lightning_modules.voice2face_targets import load_latent_targets, ridge_head

log = logging.getLogger(__name__)

ENCODER_MODES = ("joint", "frozen", "finetune")
MIXING_SOURCES = ("batch", "self")
GENERATOR_TRAIN = ("frozen", "finetune")
CHECKPOINT_FORMAT = 2  # bump when the checkpoint layout changes (2: networks under lightning_modules.nets)


class Voice2FaceGAN(LightningModule):
    def __init__(
        self,
        encoder: dict,  # AudioEncoder config (`_target_` + kwargs); in_features set here.
        generator: dict,  # Generator config; z_dim and img_resolution are filled in.
        discriminator: dict,  # Discriminator config; img_resolution, num_classes filled in.
        num_classes: int,  # Training identities (the classifier's outputs).
        feature_dim: int = 64,  # Audio feature bands F of the [B, F, T] input.
        img_resolution: int = 64,  # Face size S.
        noise_z_dim: int = 0,  # Extra Gaussian noise appended to the voice embedding (0 = none).
        latent_space: str = "z",  # z: the voice is the mapping's input | w: a head gives one w | wplus: one w
        # per synthesis layer (lightning_modules/nets/latent.py).
        latent_layers: int = 2,  # FC layers of the w / wplus head.
        generator_init: str | None = None,  # A pretrained G (NVlabs .pkl, rosinality .pt, export, .ckpt): its
        # architecture replaces model.generator's, and D's trunk comes from the file where it holds one.
        generator_train: str = "finetune",  # finetune | frozen (the synthesis and the G's own mapping).
        accumulate: int = 1,  # Micro-batches per optimizer step (gradient accumulation; the batch divides).
        encoder_mode: str = "joint",  # joint | frozen | finetune (the last two load `encoder_ckpt`).
        encoder_ckpt: str | None = None,  # File written by `+exp=encoder_pretrain` (encoder.pt or a .ckpt).
        lr: float = 2e-4,  # Adam learning rate of G and D (paper).
        betas: tuple = (0.5, 0.999),  # Adam betas (paper).
        encoder_lr: float | None = None,  # Adam lr of the encoder when it trains (None = lr).
        id_weight: float = 1.0,  # Weight of the identity cross-entropy in Gmain.
        cls_weight: float = 1.0,  # Weight of the classifier cross-entropy on real faces in Dmain.
        r1_gamma: float = 10.0,  # R1 weight gamma (penalty gamma/2 * |grad|^2); 0 disables Dreg.
        pl_weight: float = 2.0,  # Path-length weight; 0 disables Greg.
        pl_decay: float = 0.01,  # Decay of the running mean path length.
        pl_batch_shrink: int = 2,  # Greg runs on batch // pl_batch_shrink samples.
        G_reg_interval: int = 4,  # Lazy path-length interval (iterations).
        D_reg_interval: int = 16,  # Lazy R1 interval (iterations).
        style_mixing_prob: float = 0.9,  # Probability of mixing two latents at a random layer cut-off.
        style_mixing_source: str = "batch",  # batch: another voice of the batch | self: the same voice, new noise.
        recon_weight: float = 0.0,  # L1 of G(voice) to the speaker's real face in Gmain (not the paper's; 0 = off).
        colour_weight: float = 0.0,  # G(voice) against the speaker's face, both pooled (a deviation; 0 = off).
        colour_size: int = 8,  # Cells per side of that pooling: colours and their layout, no strokes of features.
        xflip: bool = False,  # Mirror each real face with probability 1/2 (D and L1 targets).
        latent_weight: float = 0.0,  # Squared distance of the voice's ws to its speaker's projected ws (deviation).
        latent_targets: str | None = None,  # experiments.project output: identity_<name>.npy [num_ws, w_dim].
        latent_init_ridge: float | None = None,  # The head's output starts at a ridge fit (this penalty) of targets.
        perceptual_weight: float = 0.0,  # LPIPS between G(voice) and the speaker's real face (deviation).
        perceptual_vgg: str | None = None,  # torchvision vgg16-397923af.pth for LPIPS (None: the hub cache).
        ema_kimg: float = 10.0,  # Half-life of the G EMA in thousands of images.
        ema_rampup: float | None = 0.05,  # Half-life capped at cur_nimg * ema_rampup (None = off).
        encoder_ema: bool = False,  # Average the encoder as G_ema averages G; embed with it outside training.
        total_kimg: float | None = None,  # Stop after this many thousand images (None = trainer limits).
        bf16: bool = False,  # bf16 autocast of the forward passes on CUDA.
        max_bad_steps: int = 8,  # Stop after this many consecutive steps with non-finite loss/grads.
    ):
        super().__init__()
        encoder, generator, discriminator = plain_config(encoder), plain_config(generator), plain_config(discriminator)
        betas = [float(b) for b in betas]
        self.save_hyperparameters()  # the arguments as given (plain types), before generator_init's rewrite
        self.automatic_optimization = False
        self._check_settings()
        self.encoder, self.embed_dim = self._build_encoder(encoder, feature_dim), int(encoder.get("embed_dim", 512))
        self.G, self.D = self._build_gan(generator, discriminator, num_classes)
        self._place_voice(latent_space, latent_layers, generator_train, generator_init)
        self.G_ema, self.encoder_ema = self._averages(encoder_ema)
        self._register_training_state()
        self._set_up_losses()

    def _averages(self, encoder_ema: bool):
        """G_ema (NVlabs' average of G) and, with encoder_ema, the encoder averaged alike for G_ema's head to read."""
        encoder_ema = copy.deepcopy(self.encoder).eval().requires_grad_(False) if encoder_ema else None
        return copy.deepcopy(self.G).eval().requires_grad_(False), encoder_ema

    def _build_encoder(self, encoder: dict, feature_dim: int):
        """The audio encoder of its config; encoder_ckpt's weights (stage 1) where given, frozen in `frozen` mode."""
        net = build_network(encoder, "model.encoder", in_features=feature_dim)
        if self.hparams.encoder_ckpt:
            load_encoder_weights(net, self.hparams.encoder_ckpt)
        if self.hparams.encoder_mode == "frozen":
            net.requires_grad_(False).eval()
        return net

    def _set_up_losses(self):
        """The phases' losses and which of the lazy regularisers run."""
        hp = self.hparams
        # A loss, not part of the model: kept out of the state dict (a checkpoint need not carry VGG16).
        try:
            self.perceptual = [LPIPSDistance(hp.perceptual_vgg, max_size=256)] if hp.perceptual_weight > 0 else []
        except MetricUnavailable as err:
            need = "voice2face: model.perceptual_weight > 0 needs LPIPS' VGG16 (model.perceptual_vgg)"
            raise ValueError(f"{need}: {err}") from None
        self.loss = Voice2FaceLoss(self)  # the phases' losses (NVlabs' StyleGAN2Loss), driven by training_step
        # Path length needs the mapping/synthesis split; baselines without `.mapping` skip Greg and mixing.
        self.has_mapping = hasattr(self.G, "mapping") and hasattr(self.G, "synthesis")
        self.pl_active = hp.pl_weight > 0 and self.has_mapping and hp.G_reg_interval > 0
        if self.pl_active and not any(p.requires_grad for p in self.G.parameters()):
            log.info("voice2face: path length off: nothing in G trains (frozen G, voice through its own mapping)")
            self.pl_active = False
        self.r1_active = hp.r1_gamma > 0 and hp.D_reg_interval > 0

    def _check_settings(self):
        """What the schema checks of a config, for a model built in code, and the settings that need each other."""
        hp = self.hparams
        for name, allowed in (
            ("encoder_mode", ENCODER_MODES),
            ("style_mixing_source", MIXING_SOURCES),
            ("latent_space", LATENT_SPACES),
            ("generator_train", GENERATOR_TRAIN),
        ):
            if hp[name] not in allowed:
                raise ValueError(f"voice2face: {name} must be one of {allowed}, got {hp[name]!r}")
        if hp.latent_weight > 0 and (hp.latent_space == "z" or not hp.latent_targets):
            raise ValueError(
                "voice2face: latent_weight > 0 pulls the head's ws toward projected W+ targets: it needs "
                "model.latent_space=wplus (or w) and model.latent_targets=DIR (python -m experiments.project)"
            )
        if hp.latent_init_ridge is not None and (hp.latent_space == "z" or not hp.latent_targets):
            raise ValueError(
                "voice2face: latent_init_ridge fits the head's output to the speakers' latent targets: it needs "
                "model.latent_space=w (or wplus) and model.latent_targets"
            )
        if hp.accumulate < 1:
            raise ValueError(f"voice2face: accumulate must be >= 1 micro-batches, got {hp.accumulate}")
        if hp.encoder_mode != "joint" and not hp.encoder_ckpt:
            raise ValueError(
                f"voice2face: encoder_mode={hp.encoder_mode!r} needs model.encoder_ckpt=PATH (the encoder.pt of "
                "+exp=encoder_pretrain), stage 1 in this run (pretrain_encoder=sgd), or model.encoder_mode=joint"
            )
        if hp.colour_weight > 0 and hp.img_resolution % hp.colour_size:
            raise ValueError(f"voice2face: colour_size={hp.colour_size} must divide the face size {hp.img_resolution}")

    def _build_gan(self, generator: dict, discriminator: dict, num_classes: int):
        """(G, D) of their configs; with generator_init, the file's G (its arguments written into the
        hyper-parameters, so the run's checkpoints rebuild it without the file) and D's trunk from the file."""
        hp, trunk = self.hparams, None
        if hp.generator_init:
            impl = generator.get("impl", "auto")
            init_G, d_kwargs, trunk = load_generator_init(hp.generator_init, hp.img_resolution, impl)
            generator = {"_target_": "lightning_modules.nets.stylegan2.Generator", **init_G.init_kwargs, "impl": impl}
            discriminator = {**discriminator, **d_kwargs}
            self.hparams.update(generator=generator, discriminator=discriminator)
        z_fill = {} if "z_dim" in generator else {"z_dim": self.embed_dim + hp.noise_z_dim}
        G = build_network(generator, "model.generator", img_resolution=hp.img_resolution, **z_fill)
        if hp.generator_init:
            G.load_state_dict(init_G.state_dict())
        D = build_network(
            discriminator, "model.discriminator", img_resolution=hp.img_resolution, num_classes=num_classes
        )
        if trunk is not None:
            check_trunk(D, trunk, hp.generator_init)
            D.load_state_dict(trunk, strict=False)  # the identity head (this run's classes) starts fresh
        return G, D

    def _register_training_state(self):
        self.register_buffer("pl_mean", torch.zeros([]))
        # The speakers' projected W+ (filled from latent_targets in setup) and which speakers have one.
        self.register_buffer("w_targets", torch.zeros([0]), persistent=False)
        self.register_buffer("w_target_mask", torch.zeros([0], dtype=torch.bool), persistent=False)
        self.cur_nimg = 0
        self.iteration = 0
        self.train_seconds = 0.0  # wall time of training so far (all of it: data, callbacks, ...)
        self._clock = None
        self.skipped_steps = 0  # optimizer steps skipped for non-finite losses or gradients
        self.bad_streak = 0  # ... of which consecutive, up to now

    def _place_voice(self, latent_space, latent_layers, generator_train, generator_init):
        """Put the voice where latent_space says, and freeze what generator_train freezes."""
        z_dim = self.embed_dim + self.hparams.noise_z_dim
        if generator_train == "frozen" and not generator_init:
            raise ValueError(
                "voice2face: model.generator_train=frozen without model.generator_init would freeze a random "
                "generator; name the pretrained one (model.generator_init=...) or train it (generator_train=finetune)"
            )
        if latent_space != "z" or generator_init:
            if not isinstance(getattr(self.G, "mapping", None), torch.nn.Module) or not hasattr(self.G, "synthesis"):
                raise ValueError(
                    f"voice2face: latent_space={latent_space!r} / generator_init need a StyleGAN2 generator "
                    f"(mapping + synthesis); model.generator is {self.hparams.generator['_target_']}"
                )
        if latent_space == "z" and generator_init and self.G.mapping.z_dim != z_dim:
            raise ValueError(
                f"{generator_init}: its mapping takes a {self.G.mapping.z_dim}-d z, but the voice embedding "
                f"(+ noise) is {z_dim}-d; set model.encoder.embed_dim={self.G.mapping.z_dim - self.hparams.noise_z_dim}"
                " or drive it through model.latent_space=wplus (or w)"
            )
        if generator_train == "frozen":
            self.G.requires_grad_(False)
        if latent_space != "z":
            # The G's own mapping stays as the head's prior, unused in training, hence frozen; the head, built
            # after any freeze, is the part of G that always trains.
            impl = self.hparams.generator.get("impl", "auto")
            self.G.mapping = VoiceLatent(
                self.G.mapping.requires_grad_(False), z_dim, latent_space, latent_layers, impl=impl
            )

    # ------------------------------------------------------------------ inference
    def train(self, mode: bool = True):
        super().train(mode)
        self.G_ema.eval()
        if self.encoder_ema is not None:
            self.encoder_ema.eval()
        if self.hparams.encoder_mode == "frozen":
            self.encoder.eval()
        return self

    def embed(self, audio, lengths=None, ema=None):
        """audio [B, F, T], lengths [B] -> voice embedding [B, embed_dim]: by the averaged encoder (encoder_ema, where
        there is one) if `ema`, by the encoder that trains if not; ema=None: averaged in eval mode, as G_ema draws."""
        if audio.ndim != 3 or audio.shape[1] != self.hparams.feature_dim:
            raise ValueError(f"voice2face: audio must be [B, {self.hparams.feature_dim}, T], got {list(audio.shape)}")
        if self.encoder_ema is not None and (not self.training if ema is None else ema):
            with torch.no_grad():
                return self.encoder_ema(audio, lengths)
        trainable = self.hparams.encoder_mode != "frozen" and torch.is_grad_enabled()
        with contextlib.nullcontext() if trainable else torch.no_grad():
            return self.encoder(audio, lengths)

    def latent(self, emb, noise=None):
        """Generator input z = embedding ‖ noise (noise ~ N(0, I) unless given; only if noise_z_dim > 0)."""
        n = self.hparams.noise_z_dim
        if n == 0:
            return emb
        if noise is None:
            noise = torch.randn(emb.shape[0], n, device=emb.device, dtype=emb.dtype)
        return torch.cat([emb, noise], dim=1)

    @torch.no_grad()
    def generate(self, audio, lengths=None, noise_mode="const", truncation_psi=1.0, ema=True, noise=None):
        """Faces [B, 3, S, S] in about [-1, 1] for the voices in `audio` (EMA generator and encoder by default)."""
        return self.generate_from(self.embed(audio, lengths, ema), noise_mode, truncation_psi, ema, noise)

    def generate_from(self, emb, noise_mode="const", truncation_psi=1.0, ema=True, noise=None):
        """Faces [B, 3, S, S] for voice embeddings [B, embed_dim] (e.g. of a long clip embedded in windows)."""
        G = self.G_ema if ema else self.G
        return G(self.latent(emb, noise), truncation_psi=truncation_psi, noise_mode=noise_mode)

    # ------------------------------------------------------------------ training
    def autocast(self):
        if self.hparams.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def training_step(self, batch, batch_idx):
        real, label = self._real_faces(batch)
        mbs = [
            dict(zip(("audio", "lengths", "real", "label"), part))
            for part in self._chunks(batch["audio"], batch.get("audio_lengths"), real, label)
        ]
        stats = {}
        for phase, opt, interval in self._phases():
            if interval <= 0 or self.iteration % interval:
                continue
            self.toggle_optimizer(opt)
            opt.zero_grad(set_to_none=True)
            parts = self._greg_parts(mbs) if phase == "Greg" else mbs
            losses, per_part = zip(*(self.loss.accumulate_gradients(phase, mb, gain=interval) for mb in parts))
            self._step_unless_non_finite(opt, losses, phase)
            self.untoggle_optimizer(opt)
            stats.update({k: torch.stack([s[k] for s in per_part]).mean() for k in per_part[0]})
        stats.update(self._advance(real.shape[0]))
        self.log_dict({k: float(v) for k, v in stats.items()}, on_step=True, on_epoch=False, batch_size=real.shape[0])

    def _phases(self):
        """(phase, optimizer, interval) in NVlabs' order; interval 0: the phase is off."""
        opt_G, opt_D = self.optimizers()
        return (
            ("Gmain", opt_G, 1),
            ("Greg", opt_G, self.hparams.G_reg_interval if self.pl_active else 0),
            ("Dmain", opt_D, 1),
            ("Dreg", opt_D, self.hparams.D_reg_interval if self.r1_active else 0),
        )

    def _real_faces(self, batch):
        """(faces [B, 3, S, S], mirrored with probability 1/2 under xflip; labels [B])."""
        real, label = batch["face"], batch["label"]
        if real.ndim != 4 or real.shape[-1] != self.hparams.img_resolution:
            raise ValueError(
                f"voice2face: batch['face'] must be [B, 3, S, S] with S = "
                f"{self.hparams.img_resolution}, got {list(real.shape)}"
            )
        if self.hparams.xflip:
            flip = torch.rand(real.shape[0], device=real.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        return real, label

    def _chunks(self, *tensors):
        """Each tensor (or None) split into `accumulate` micro-batches: a list of tuples, one per micro-batch."""
        k = self.hparams.accumulate
        if tensors[0].shape[0] % k:
            raise ValueError(f"voice2face: a batch of {tensors[0].shape[0]} does not split into accumulate={k} parts")
        parts = [t.chunk(k) if t is not None else (None,) * k for t in tensors]
        return list(zip(*parts))

    def _greg_parts(self, mbs):
        """Greg's micro-batches: the first batch // pl_batch_shrink generator inputs of Gmain, whole micro-batches."""
        z, k = torch.cat([mb["z"] for mb in mbs]), self.hparams.accumulate
        n = max(z.shape[0] // self.hparams.pl_batch_shrink // k, 1) * k
        return [{"z": z_i} for (z_i,) in self._chunks(z[:n])]

    def _step_unless_non_finite(self, opt, losses, phase):
        """Step, unless a loss or a gradient is non-finite: then the step is skipped (weights and Adam moments
        unchanged) and counted; `max_bad_steps` in a row stop the run."""
        bad = torch.zeros([], dtype=torch.bool, device=self.device)
        for loss in losses:
            bad = bad | ~torch.isfinite(loss).all()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms = torch.stack(torch._foreach_norm(grads)) if grads else torch.zeros(1, device=self.device)
        bad = (bad | ~torch.isfinite(norms).all()).float()
        if distributed():  # one rank's bad loss stops the step on all ranks
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad):
            opt.step()
            self.bad_streak = 0
            return
        opt.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_streak += 1
        log.warning(
            f"voice2face: skipped {phase} step at iteration {self.iteration}: non-finite loss or gradients "
            f"({self.skipped_steps} skipped in all, {self.bad_streak} in a row)"
        )
        if self.bad_streak >= self.hparams.max_bad_steps:
            raise BadStepsError(
                f"voice2face: {self.bad_streak} optimizer steps in a row had non-finite losses or gradients (the "
                f"last in phase {phase}, iteration {self.iteration}); stopped.",
                f"Lower model.lr or raise model.r1_gamma and check the data for NaN "
                f"(model.max_bad_steps={self.hparams.max_bad_steps} sets how many bad steps in a row are tolerated)",
            )

    @torch.no_grad()
    def update_ema(self, batch_size):
        average_buffers_across_ranks(self.G)
        beta = ema_beta(batch_size, self.cur_nimg, self.hparams.ema_kimg, self.hparams.ema_rampup)
        update_ema(self.G_ema, self.G, beta)
        if self.encoder_ema is not None:
            update_ema(self.encoder_ema, self.encoder, beta)
        return beta

    def _advance(self, batch_size):
        """Count the images, update G_ema, time the iteration: their statistics."""
        global_batch = batch_size * self.trainer.world_size
        stats = {}
        self.cur_nimg += global_batch
        self.iteration += 1
        stats["progress/ema_beta"] = self.update_ema(global_batch)
        stats["progress/kimg"] = self.cur_nimg / 1000
        now = time.perf_counter()  # one iteration = from the previous step's end: data and callbacks included
        seconds, self._clock = now - self._clock, now
        self.train_seconds += seconds
        stats.update(
            {
                "perf/train_s": self.train_seconds,
                "perf/img_per_s": global_batch / seconds,
                "perf/sec_per_kimg": 1000 * seconds / global_batch,
            }
        )
        if self.device.type == "cuda":
            stats["perf/peak_alloc_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            stats["perf/peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        stats["progress/skipped_steps"] = self.skipped_steps
        if self.pl_active:
            stats["reg/pl_mean"] = self.pl_mean.detach().clone()
        return stats

    def configure_optimizers(self):
        hp = self.hparams
        g_kwargs = lazy_adam_kwargs(hp.lr, hp.betas, hp.G_reg_interval if self.pl_active else None)
        d_kwargs = lazy_adam_kwargs(hp.lr, hp.betas, hp.D_reg_interval if self.r1_active else None)
        g_groups = [{"params": [p for p in self.G.parameters() if p.requires_grad]}]
        if hp.encoder_mode != "frozen":
            # The encoder only gets Gmain gradients (Greg sees detached embeddings): no lazy re-scaling.
            g_groups.append(
                {
                    "params": list(self.encoder.parameters()),
                    "lr": hp.encoder_lr if hp.encoder_lr is not None else hp.lr,
                    "betas": tuple(hp.betas),
                }
            )
        opt_G = torch.optim.Adam(g_groups, **g_kwargs)
        opt_D = torch.optim.Adam(self.D.parameters(), **d_kwargs)
        return [opt_G, opt_D]

    # ------------------------------------------------------------------ progress, checkpoints, samples
    def setup(self, stage):
        # A fresh fit starts G's output bias (model.generator.img_bias) at the train split's mean face; a resumed
        # fit restores the trained bias from its checkpoint right after this hook.
        bias = getattr(getattr(self.G, "synthesis", None), "img_bias", None)
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and (self.hparams.latent_weight > 0 or self.hparams.latent_init_ridge is not None):
            load_latent_targets(self, dm.identities("train"))
        if stage == "fit" and self.hparams.latent_init_ridge is not None:
            ridge_head(self, dm)  # a resumed fit then restores the trained head from its checkpoint
        # A pretrained G (generator_init) keeps its own trained bias.
        if stage != "fit" or bias is None or not hasattr(dm, "faces") or self.hparams.generator_init:
            return
        mean = mean_face(dm.faces("train"), mirror=self.hparams.xflip).to(bias.device)
        for G in (self.G, self.G_ema):
            G.synthesis.set_img_bias(mean)

    def on_train_start(self):
        self._clock = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.hparams.total_kimg is not None and self.cur_nimg >= self.hparams.total_kimg * 1000:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint):
        checkpoint["voice2face_format"] = CHECKPOINT_FORMAT
        checkpoint["voice2face_progress"] = {
            "cur_nimg": int(self.cur_nimg),
            "iteration": int(self.iteration),
            "train_seconds": float(self.train_seconds),
        }
        checkpoint["voice2face_skipped_steps"] = int(self.skipped_steps)

    def on_load_checkpoint(self, checkpoint):
        progress = checkpoint.get("voice2face_progress")
        if progress is not None:
            self.cur_nimg, self.iteration = int(progress["cur_nimg"]), int(progress["iteration"])
            self.train_seconds = float(progress.get("train_seconds", 0.0))
        self.skipped_steps = int(checkpoint.get("voice2face_skipped_steps", 0))
