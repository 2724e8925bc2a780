"""Voice2FaceGAN: an audio encoder conditions a StyleGAN2 generator; D shares its trunk with an identity
classifier.

Training follows NVlabs stylegan2-ada-pytorch (`training/loss.py`, `training/training_loop.py`) with manual
optimisation. Each iteration runs the phases
    Gmain  NS logistic loss through D + identity cross-entropy of D's classifier on the generated faces,
    Greg   path-length penalty (every `G_reg_interval` iterations, loss x interval),
    Dmain  NS logistic loss on real and generated faces + classifier cross-entropy on the real faces,
    Dreg   R1 penalty on real faces (every `D_reg_interval` iterations, loss x interval),
then updates the EMA of G. Budgets are in images (`cur_nimg`), not `trainer.global_step`, which counts every
optimizer step under manual optimisation.
"""

import contextlib
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.constants import CONFIG_NAME
from lightning import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.faces import mean_face
from lightning_modules.build import build_network, check_arguments, check_network_config
from lightning_modules.callbacks import BadStepsError
from lightning_modules.encoder_pretrain import load_encoder_weights
from lightning_modules.latent import LATENT_SPACES, VoiceLatent
from lightning_modules.legacy import compare_state_dict, load_pretrained
from lightning_modules.losses import (
    ema_beta,
    lazy_adam_kwargs,
    ns_discriminator_loss,
    ns_generator_loss,
    path_lengths,
    r1_penalty,
)
from lightning_modules.metrics.ppl import LPIPSDistance
from lightning_modules.metrics.weights import MetricUnavailable
from lightning_modules.model_folder import read_model_folder
from lightning_modules.safe_load import load_data, refuse_unreadable

log = logging.getLogger(__name__)

ENCODER_MODES = ("joint", "frozen", "finetune")
MIXING_SOURCES = ("batch", "self")
GENERATOR_TRAIN = ("frozen", "finetune")
CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes; experiments.run refuses other formats
# Hyper-parameters that earlier checkpoints store but that never shaped the networks: the sample-grid settings,
# now callbacks.samples (lightning_modules.samples.SampleGrids). Dropped when such a checkpoint is read.
RETIRED_HPARAMS = ("sample_every_kimg", "sample_count", "sample_utterances")


def _plain(cfg):
    """DictConfig/ListConfig -> plain dict/list: hyper-parameters (and checkpoints) hold plain types only."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)


def read_checkpoint(ckpt: str | Path) -> dict:
    """A voice2face training checkpoint, or a model folder (lightning_modules.model_folder), read once as data
    (weights_only; safetensors), its networks' configs checked before
    anything is built from them (`Voice2FaceGAN.from_checkpoint` builds the model, the datamodule hyper-parameters
    give the voice pipeline)."""
    path = Path(ckpt)
    if path.is_dir() and (path / CONFIG_NAME).is_file():  # any other folder is refused below, by what it is
        state = read_model_folder(path)
    else:
        refuse_unreadable(
            path,
            f"{path}: checkpoint not found (ckpt= must name a .ckpt written by training)",
            "ckpt= must name a .ckpt written by training (a run's checkpoints/last.ckpt) or a model folder "
            "(experiments.export format=pretrained)",
        )
        state = load_data(path, "a voice2face checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a voice2face training checkpoint (no hyper_parameters / state_dict)")
    state["hyper_parameters"] = {k: v for k, v in state["hyper_parameters"].items() if k not in RETIRED_HPARAMS}
    for part in ("encoder", "generator", "discriminator"):
        check_network_config(state["hyper_parameters"].get(part), f"{path}: model.{part}")
    check_arguments(Voice2FaceGAN, state["hyper_parameters"], f"{path}: hyper_parameters")
    mode = state["hyper_parameters"].get("encoder_mode", "joint")
    if mode not in ENCODER_MODES:  # from_checkpoint builds every checkpoint as joint, so __init__ cannot check it
        raise ValueError(
            f"{path}: hyper_parameters: encoder_mode {mode!r} is not one of {ENCODER_MODES} (a checkpoint of "
            "another version?); use the version that wrote it"
        )
    return state


def load_generator_init(path, img_resolution: int, impl: str = "auto"):
    """(G, D arguments, D weights) of model.generator_init (legacy.load_pretrained), refused unless its G draws
    faces of the run's size."""
    pretrained = load_pretrained(path, impl=impl)
    G = pretrained[0]
    if G.img_resolution != img_resolution:
        raise ValueError(
            f"{path}: a {G.img_resolution} px generator, but the faces are {img_resolution} px; prepare them at "
            f"its size (data.face_size={G.img_resolution})"
        )
    return pretrained


def check_trunk(D: torch.nn.Module, trunk: dict, source) -> None:
    """The D weights of a generator file against the D its arguments build (its identity head aside)."""
    own = {k: v for k, v in D.state_dict().items() if not k.startswith("classifier.")}
    compare_state_dict(own, trunk, f"{source}: its discriminator does not fit model.discriminator")


def _projected_identities(folder: Path) -> set[str] | None:
    """The identities the manifest of an experiments.project folder lists: an `identity_<id>.npy` of an earlier
    projection into the folder (overwrite=true keeps other runs' files) is not this projection's."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        identities = json.loads(manifest.read_text())["identities"]
        assert isinstance(identities, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{manifest}: not the manifest experiments.project writes (no 'identities' object)") from None
    return set(identities)


def _read_w(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """One projected W+ [num_ws, w_dim], its .npy header checked before the data is read (a header may claim any
    size), its values finite (a NaN target made every G step a skipped one)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            found, _, dtype = read_header(f)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a .npy array ({err})") from None
    if tuple(found) != shape or dtype.kind != "f":
        raise ValueError(f"{path}: a W+ of shape {list(found)} ({dtype}), but this G takes {list(shape)} floats")
    w = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if not torch.isfinite(w).all():
        raise ValueError(f"{path}: its W+ holds NaN or infinity; project that identity again")
    return w


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
        # per synthesis layer (lightning_modules/latent.py).
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
        style_mixing_source: str = "batch",  # batch: the second latent is another voice of the batch;
        # self: the same voice with fresh noise (conditional mixing).
        recon_weight: float = 0.0,  # L1 between G(voice) and the speaker's real face in Gmain (a
        # deviation from the paper; 0 = off, as the paper trains).
        xflip: bool = False,  # Mirror each real face with probability 1/2 (D and L1 targets).
        latent_weight: float = 0.0,  # Squared distance between the voice's ws and its speaker's projected W+
        # (a deviation from the paper, as recon_weight; needs latent_targets and latent_space w | wplus).
        latent_targets: str | None = None,  # experiments.project output: identity_<name>.npy [num_ws, w_dim].
        perceptual_weight: float = 0.0,  # LPIPS between G(voice) and the speaker's real face (deviation).
        perceptual_vgg: str | None = None,  # torchvision vgg16-397923af.pth for LPIPS (None: the hub cache).
        ema_kimg: float = 10.0,  # Half-life of the G EMA in thousands of images.
        ema_rampup: float | None = 0.05,  # Half-life capped at cur_nimg * ema_rampup (None = off).
        total_kimg: float | None = None,  # Stop after this many thousand images (None = trainer limits).
        bf16: bool = False,  # bf16 autocast of the forward passes on CUDA.
        max_bad_steps: int = 8,  # Stop after this many consecutive steps with non-finite loss/grads.
    ):
        super().__init__()
        encoder, generator, discriminator = _plain(encoder), _plain(generator), _plain(discriminator)
        betas = [float(b) for b in betas]
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"voice2face: encoder_mode must be one of {ENCODER_MODES}, got {encoder_mode!r}")
        if style_mixing_source not in MIXING_SOURCES:
            raise ValueError(
                f"voice2face: style_mixing_source must be one of {MIXING_SOURCES}, got {style_mixing_source!r}"
            )
        for name, value, allowed in (
            ("latent_space", latent_space, LATENT_SPACES),
            ("generator_train", generator_train, GENERATOR_TRAIN),
        ):
            if value not in allowed:
                raise ValueError(f"voice2face: {name} must be one of {allowed}, got {value!r}")
        if latent_weight > 0 and (latent_space == "z" or not latent_targets):
            raise ValueError(
                "voice2face: latent_weight > 0 pulls the head's ws toward projected W+ targets: it needs "
                "model.latent_space=wplus (or w) and model.latent_targets=DIR (python -m experiments.project)"
            )
        if accumulate < 1:
            raise ValueError(f"voice2face: accumulate must be >= 1 micro-batches, got {accumulate}")
        if encoder_mode != "joint" and not encoder_ckpt:
            raise ValueError(
                f"voice2face: encoder_mode={encoder_mode!r} needs model.encoder_ckpt=PATH (the encoder.pt written "
                "by `python -m experiments.run +exp=encoder_pretrain`), or stage 1 in this run "
                "(pretrain_encoder=sgd), or model.encoder_mode=joint"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False

        self.encoder = build_network(encoder, "model.encoder", in_features=feature_dim)
        if encoder_ckpt:
            load_encoder_weights(self.encoder, encoder_ckpt)
        if encoder_mode == "frozen":
            self.encoder.requires_grad_(False).eval()
        self.embed_dim = int(encoder.get("embed_dim", 512))
        trunk = None
        if generator_init:
            # The file's G, its arguments written into the hyper-parameters: the run's checkpoints rebuild it
            # (from_checkpoint) without the file. D takes the file's trunk where the file has a D.
            impl = generator.get("impl", "auto")
            init_G, d_kwargs, trunk = load_generator_init(generator_init, img_resolution, impl)
            generator = {"_target_": "lightning_modules.stylegan2.Generator", **init_G.init_kwargs, "impl": impl}
            discriminator = {**discriminator, **d_kwargs}
            self.hparams.update(generator=generator, discriminator=discriminator)
        z_fill = {} if "z_dim" in generator else {"z_dim": self.embed_dim + noise_z_dim}
        self.G = build_network(generator, "model.generator", img_resolution=img_resolution, **z_fill)
        if generator_init:
            self.G.load_state_dict(init_G.state_dict())
        self.D = build_network(
            discriminator, "model.discriminator", img_resolution=img_resolution, num_classes=num_classes
        )
        if trunk is not None:
            check_trunk(self.D, trunk, generator_init)
            self.D.load_state_dict(trunk, strict=False)  # the identity head (this run's classes) starts fresh
        self._place_voice(latent_space, latent_layers, generator_train, generator_init)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.register_buffer("pl_mean", torch.zeros([]))
        # The speakers' projected W+ (filled from latent_targets in setup) and which speakers have one.
        self.register_buffer("w_targets", torch.zeros([0]), persistent=False)
        self.register_buffer("w_target_mask", torch.zeros([0], dtype=torch.bool), persistent=False)
        # A loss, not part of the model: kept out of the state dict (a checkpoint need not carry VGG16).
        try:
            self._perceptual = [LPIPSDistance(perceptual_vgg, max_size=256)] if perceptual_weight > 0 else []
        except MetricUnavailable as err:
            need = "voice2face: model.perceptual_weight > 0 needs LPIPS' VGG16 (model.perceptual_vgg)"
            raise ValueError(f"{need}: {err}") from None

        # Path length needs the mapping/synthesis split; baselines without `.mapping` skip Greg and mixing.
        self.has_mapping = hasattr(self.G, "mapping") and hasattr(self.G, "synthesis")
        self.pl_active = pl_weight > 0 and self.has_mapping and G_reg_interval > 0
        if self.pl_active and not any(p.requires_grad for p in self.G.parameters()):
            log.info("voice2face: path length off: nothing in G trains (frozen G, voice through its own mapping)")
            self.pl_active = False
        self.r1_active = r1_gamma > 0 and D_reg_interval > 0
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
        if self.hparams.encoder_mode == "frozen":
            self.encoder.eval()
        return self

    def embed(self, audio, lengths=None):
        """audio [B, F, T], lengths [B] -> voice embedding [B, embed_dim]."""
        if audio.ndim != 3 or audio.shape[1] != self.hparams.feature_dim:
            raise ValueError(f"voice2face: audio must be [B, {self.hparams.feature_dim}, T], got {list(audio.shape)}")
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
        """Faces [B, 3, S, S] in about [-1, 1] for the voices in `audio` (EMA generator by default)."""
        return self.generate_from(self.embed(audio, lengths), noise_mode, truncation_psi, ema, noise)

    def generate_from(self, emb, noise_mode="const", truncation_psi=1.0, ema=True, noise=None):
        """Faces [B, 3, S, S] for voice embeddings [B, embed_dim] (e.g. of a long clip embedded in windows)."""
        G = self.G_ema if ema else self.G
        return G(self.latent(emb, noise), truncation_psi=truncation_psi, noise_mode=noise_mode)

    # ------------------------------------------------------------------ training phases
    def _autocast(self):
        if self.hparams.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_G(self, z, update_emas=False):
        """Generate with style mixing (NVlabs `run_G`). Returns (img, ws); ws is None without a mapping."""
        if not self.has_mapping:
            return self.G(z), None
        ws = self.G.mapping(z, update_emas=update_emas)
        if self.hparams.style_mixing_prob > 0 and ws.shape[1] > 1:
            cutoff = int(torch.randint(1, ws.shape[1], []))
            if float(torch.rand([])) >= self.hparams.style_mixing_prob:
                cutoff = ws.shape[1]
            # The second latent: another voice of the batch, or the same voice (each with fresh noise). With
            # noise_z_dim = 0 the same voice gives the same w, so `self` mixing changes nothing then.
            emb, noise = z[:, : self.embed_dim], z[:, self.embed_dim :]
            if self.hparams.style_mixing_source == "batch":
                emb = emb.roll(1, dims=0)
            z2 = torch.cat([emb, torch.randn_like(noise)], dim=1)
            ws[:, cutoff:] = self.G.mapping(z2, update_emas=False)[:, cutoff:]
        return self.G.synthesis(ws), ws

    def _chunks(self, *tensors):
        """Each tensor (or None) split into `accumulate` micro-batches: a list of tuples, one per micro-batch."""
        k = self.hparams.accumulate
        if tensors[0].shape[0] % k:
            raise ValueError(f"voice2face: a batch of {tensors[0].shape[0]} does not split into accumulate={k} parts")
        parts = [t.chunk(k) if t is not None else (None,) * k for t in tensors]
        return list(zip(*parts))

    def _step(self, opt, losses, phase):
        """zero_grad -> backward of each micro-batch's loss (an iterable, each / accumulate) -> step, unless a loss
        or a gradient is non-finite: then the step is skipped (weights and Adam moments unchanged) and counted;
        `max_bad_steps` in a row stop the run."""
        opt.zero_grad(set_to_none=True)
        bad = torch.zeros([], dtype=torch.bool, device=self.device)
        for loss in losses:
            # always: under DDP every rank must join the gradient all-reduce
            self.manual_backward(loss / self.hparams.accumulate if self.hparams.accumulate > 1 else loss)
            bad = bad | ~torch.isfinite(loss.detach()).all()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms = torch.stack(torch._foreach_norm(grads)) if grads else torch.zeros(1, device=self.device)
        bad = (bad | ~torch.isfinite(norms).all()).float()
        if self._distributed():  # one rank's bad loss stops the step on all ranks
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        finite = not bool(bad)
        if finite:
            opt.step()
            self.bad_streak = 0
            return
        opt.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_streak += 1
        log.warning(
            "voice2face: skipped %s step at iteration %d: non-finite loss or gradients "
            "(%d skipped in all, %d in a row)",
            phase,
            self.iteration,
            self.skipped_steps,
            self.bad_streak,
        )
        if self.bad_streak >= self.hparams.max_bad_steps:
            raise BadStepsError(
                f"voice2face: {self.bad_streak} optimizer steps in a row had non-finite losses or gradients (the "
                f"last in phase {phase}, iteration {self.iteration}); stopped.",
                f"Lower model.lr or raise model.r1_gamma and check the data for NaN "
                f"(model.max_bad_steps={self.hparams.max_bad_steps} sets how many bad steps in a row are tolerated)",
            )

    def latent_loss(self, ws, label):
        """Mean squared distance per w between `ws` [B, num_ws, w_dim] and the speakers' targets, over the
        speakers that have one (zero where none in the batch has)."""
        has = self.w_target_mask[label]
        if not bool(has.any()):
            return ws.sum() * 0
        return (ws.float()[has] - self.w_targets[label[has]]).square().sum(-1).mean()

    def load_latent_targets(self, names: list[str]) -> None:
        """w_targets [num_classes, num_ws, w_dim] from latent_targets/identity_<name>.npy for the training
        identities `names` (label order); a speaker without a file is left out of the latent loss."""
        folder = Path(self.hparams.latent_targets)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: model.latent_targets must be a folder written by experiments.project")
        shape = (self.G.num_ws, self.G.mapping.w_dim)
        listed = _projected_identities(folder)  # None: a folder made by hand, read by file name
        targets, mask = torch.zeros([len(names), *shape]), torch.zeros(len(names), dtype=torch.bool)
        for i, name in enumerate(names):
            path = folder / f"identity_{name}.npy"
            if path.is_file() and (listed is None or name in listed):
                targets[i], mask[i] = _read_w(path, shape), True
        if not mask.any():
            raise FileNotFoundError(f"{folder}: no identity_<name>.npy for any of the {len(names)} training identities")
        log.info("voice2face: latent targets for %d of %d training identities", int(mask.sum()), len(names))
        self.w_targets, self.w_target_mask = targets.to(self.device), mask.to(self.device)

    @staticmethod
    def _mean_stats(per_chunk):
        return {k: torch.stack([s[k] for s in per_chunk]).mean() for k in per_chunk[0]}

    def _phase_Gmain(self, opt, audio, lengths, real, label):
        """Returns (stats, z): z, the generator inputs of the whole batch, detached for the phases after."""
        self.toggle_optimizer(opt)
        per_chunk, zs = [], []

        def losses():
            for audio_i, lengths_i, real_i, label_i in self._chunks(audio, lengths, real, label):
                with self._autocast():
                    emb = self.embed(audio_i, lengths_i)
                z = self.latent(emb.float())
                zs.append(z.detach())
                with self._autocast():
                    img, ws = self.run_G(z)
                    logits, class_logits = self.D(img)
                loss_adv = ns_generator_loss(logits.float()).mean()
                loss = loss_adv
                stats = {"loss/G_adv": loss_adv.detach()}
                if self.hparams.recon_weight > 0:
                    loss_rec = (img.float() - real_i).abs().mean()
                    loss = loss + self.hparams.recon_weight * loss_rec
                    stats["loss/G_recon"] = loss_rec.detach()
                if self._perceptual:
                    lpips = self._perceptual[0] = self._perceptual[0].to(img.device)
                    loss_lpips = lpips(img.float(), real_i).mean()
                    loss = loss + self.hparams.perceptual_weight * loss_lpips
                    stats["loss/G_lpips"] = loss_lpips.detach()
                if self.hparams.latent_weight > 0:
                    loss_w = self.latent_loss(ws, label_i)
                    loss = loss + self.hparams.latent_weight * loss_w
                    stats["loss/G_latent"] = loss_w.detach()
                if class_logits is not None and self.hparams.id_weight > 0:
                    loss_id = F.cross_entropy(class_logits.float(), label_i)
                    loss = loss + self.hparams.id_weight * loss_id
                    stats["loss/G_id"] = loss_id.detach()
                per_chunk.append(stats)
                yield loss

        self._step(opt, losses(), "Gmain")
        self.untoggle_optimizer(opt)
        return self._mean_stats(per_chunk), torch.cat(zs)

    def _phase_Greg(self, opt, z):
        self.toggle_optimizer(opt)
        k = self.hparams.accumulate
        n = max(z.shape[0] // self.hparams.pl_batch_shrink // k, 1) * k  # whole micro-batches
        per_chunk = []

        def losses():
            for (z_i,) in self._chunks(z[:n]):
                with self._autocast():
                    img, ws = self.run_G(z_i)
                lengths = path_lengths(img.float(), ws)
                batch_mean = lengths.mean().detach()
                if self._distributed():
                    torch.distributed.all_reduce(batch_mean)  # keeps pl_mean identical on every rank
                    batch_mean /= torch.distributed.get_world_size()
                pl_mean = self.pl_mean.lerp(batch_mean, self.hparams.pl_decay)
                # A non-finite batch (its step is skipped) must not poison the running mean.
                self.pl_mean.copy_(torch.where(torch.isfinite(pl_mean), pl_mean, self.pl_mean).detach())
                penalty = (lengths - pl_mean).square()
                # img[:, 0, 0, 0] * 0 ties every synthesis parameter into the graph (as NVlabs does for DDP).
                loss = (img[:, 0, 0, 0].float() * 0 + penalty * self.hparams.pl_weight).mean()
                per_chunk.append({"reg/pl_penalty": penalty.mean().detach()})
                yield loss * self.hparams.G_reg_interval

        self._step(opt, losses(), "Greg")
        self.untoggle_optimizer(opt)
        return {**self._mean_stats(per_chunk), "reg/pl_mean": self.pl_mean.detach().clone()}

    def _phase_Dmain(self, opt, z, real, label):
        self.toggle_optimizer(opt)
        per_chunk = []

        def losses():
            for z_i, real_i, label_i in self._chunks(z, real, label):
                with torch.no_grad(), self._autocast():
                    fake, _ = self.run_G(z_i, update_emas=True)
                with self._autocast():
                    fake_logits, _ = self.D(fake)
                    real_logits, class_logits = self.D(real_i)
                loss_real, loss_fake = ns_discriminator_loss(real_logits.float(), fake_logits.float())
                loss = loss_real.mean() + loss_fake.mean()
                stats = {"loss/D_real": loss_real.mean().detach(), "loss/D_fake": loss_fake.mean().detach()}
                if class_logits is not None and self.hparams.cls_weight > 0:
                    loss_cls = F.cross_entropy(class_logits.float(), label_i)
                    loss = loss + self.hparams.cls_weight * loss_cls
                    stats["loss/D_cls"] = loss_cls.detach()
                    stats["acc/D_cls_real"] = (class_logits.argmax(1) == label_i).float().mean()
                per_chunk.append(stats)
                yield loss

        self._step(opt, losses(), "Dmain")
        self.untoggle_optimizer(opt)
        return self._mean_stats(per_chunk)

    def _phase_Dreg(self, opt, real):
        self.toggle_optimizer(opt)
        per_chunk = []

        def losses():
            for (real_i,) in self._chunks(real):
                real_i = real_i.detach().requires_grad_(True)
                with self._autocast():
                    logits, _ = self.D(real_i)
                penalty = r1_penalty(real_i, logits.float())
                loss = (logits.float() * 0 + penalty * (self.hparams.r1_gamma / 2)).mean()
                per_chunk.append({"reg/r1": penalty.mean().detach()})
                yield loss * self.hparams.D_reg_interval

        self._step(opt, losses(), "Dreg")
        self.untoggle_optimizer(opt)
        return self._mean_stats(per_chunk)

    @staticmethod
    def _distributed():
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @torch.no_grad()
    def _average_buffers_across_ranks(self, module):
        """Running statistics such as mapping.w_avg are updated from each rank's batch; their mean over ranks
        is the statistic of the global batch (they are linear in it), keeping every rank's G identical."""
        if not self._distributed():
            return
        for b in module.buffers():
            if b.is_floating_point():
                torch.distributed.all_reduce(b)
                b /= torch.distributed.get_world_size()

    @torch.no_grad()
    def update_ema(self, batch_size):
        self._average_buffers_across_ranks(self.G)
        beta = ema_beta(batch_size, self.cur_nimg, self.hparams.ema_kimg, self.hparams.ema_rampup)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)
        return beta

    def training_step(self, batch, batch_idx):
        real, label = batch["face"], batch["label"]
        if real.ndim != 4 or real.shape[-1] != self.hparams.img_resolution:
            raise ValueError(
                f"voice2face: batch['face'] must be [B, 3, S, S] with S = "
                f"{self.hparams.img_resolution}, got {list(real.shape)}"
            )
        if self.hparams.xflip:
            flip = torch.rand(real.shape[0], device=real.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        opt_G, opt_D = self.optimizers()
        stats, z = self._phase_Gmain(opt_G, batch["audio"], batch.get("audio_lengths"), real, label)
        if self.pl_active and self.iteration % self.hparams.G_reg_interval == 0:
            stats.update(self._phase_Greg(opt_G, z))
        stats.update(self._phase_Dmain(opt_D, z, real, label))
        if self.r1_active and self.iteration % self.hparams.D_reg_interval == 0:
            stats.update(self._phase_Dreg(opt_D, real))

        global_batch = real.shape[0] * self.trainer.world_size
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
        self.log_dict({k: float(v) for k, v in stats.items()}, on_step=True, on_epoch=False, batch_size=real.shape[0])

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
        if stage == "fit" and self.hparams.latent_weight > 0:
            self.load_latent_targets(dm.identities("train"))
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

    def check_features(self, n_features: int, where: str) -> None:
        """Refuse a voice pipeline whose frames are not what the encoder was trained on (e.g. MFCC + deltas under
        data_overrides for a log-mel model), before any audio is read."""
        if n_features != self.hparams.feature_dim:
            raise ValueError(
                f"{where}: gives {n_features} features a frame, but this model's encoder was trained on "
                f"{self.hparams.feature_dim}; drop data_overrides.features (the checkpoint's own are used)"
            )

    @classmethod
    def from_checkpoint(cls, state: dict, device: str | torch.device = "cpu") -> "Voice2FaceGAN":
        """The model of a checkpoint read by `read_checkpoint`, in eval mode on `device` ("auto": CUDA where there
        is one), built as Lightning's load_from_checkpoint builds it: the stored hyper-parameters, then
        on_load_checkpoint, then the weights, strictly."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device}: this machine has no CUDA GPU that torch can use; pass device=cpu")
        hparams = state["hyper_parameters"]
        # The checkpoint's weights include the encoder's, so its stage-1 file (encoder_ckpt) is not read: it need
        # not exist here (a run folder moved or handed over). Built as a joint encoder, then given its mode back.
        # Likewise its generator_init (the stored generator/discriminator configs already are the file's) and
        # the files of the training-only losses.
        files = {"encoder_ckpt": None, "generator_init": None, "latent_weight": 0.0, "perceptual_weight": 0.0}
        files["generator_train"] = "finetune"  # frozen needs the file; what it froze is in the weights already
        model = cls(**{**hparams, "encoder_mode": "joint", **files})
        model.hparams.update({k: hparams.get(k, v) for k, v in files.items()})
        mode = hparams.get("encoder_mode", "joint")
        model.hparams.update(encoder_mode=mode)
        model.encoder.requires_grad_(model.hparams.encoder_mode != "frozen")
        model.on_load_checkpoint(state)
        parts = state.get("voice2face_parts")
        if parts is None:
            model.load_state_dict(state["state_dict"], strict=True)
        else:  # a model folder: the inference networks, each of them whole
            own = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(parts))}
            compare_state_dict(own, state["state_dict"], "the model folder's model.safetensors")
            model.load_state_dict(state["state_dict"], strict=False)
        return model.to(device).eval()

    def on_load_checkpoint(self, checkpoint):
        progress = checkpoint.get("voice2face_progress")
        if progress is not None:
            self.cur_nimg, self.iteration = int(progress["cur_nimg"]), int(progress["iteration"])
            self.train_seconds = float(progress.get("train_seconds", 0.0))
        self.skipped_steps = int(checkpoint.get("voice2face_skipped_steps", 0))
