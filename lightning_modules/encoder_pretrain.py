"""EncoderPretrain: the audio encoder trained alone on speaker classification (the paper's encoder recipe).

SGD lr 1e-3, momentum 0.9, weight decay 1e-4, cosine cyclic learning rate (warm restarts every `cycle_steps`),
batch 384, 10,000 iterations. At the end of training the encoder weights are written to
`<run dir>/encoder.pt`, read by Voice2FaceGAN with `encoder_mode=frozen|finetune encoder_ckpt=<that file>`.

`aux` (not in the paper) adds heads that classify a trait of the speaker from the same embedding, read from the
data's speaker metadata (`speaker_info()`: VoxCeleb1's Gender and Nationality columns, the corpus' attributes): a
speaker-classification embedding of few speakers need not carry the accent of a speaker it has not heard.
"""

import copy
import logging
import os

import torch
import torch.nn.functional as F
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_modules import weights
from lightning_modules.io.build import build_network
from lightning_modules.io.safe_load import refuse_unreadable
from lightning_modules.io.state_dict import compare_state_dict
from lightning_modules.io.voice_encoder import HEAD, read_encoder_state, write_encoder_safetensors

log = logging.getLogger(__name__)

ENCODER_FILENAME = "encoder.pt"


def load_encoder_weights(encoder, path, speaker_head: bool = True):
    """Load encoder weights from an encoder file (lightning_modules.io.voice_encoder: encoder.pt of EncoderPretrain,
    its .safetensors, a .ckpt holding an encoder, or a shipped name). Entries the target lacks (a speaker head the
    GAN's encoder has no place for) are ignored; missing or mis-shaped ones raise. speaker_head=False leaves the
    target's own head as it is: the file's head classifies the speakers of another corpus."""
    path = os.fspath(path)
    if str(path) not in weights.SHIPPED:
        refuse_unreadable(
            path,
            f"{path}: encoder checkpoint not found; create it with `python -m experiments.run +exp=encoder_pretrain`",
            "model.encoder_ckpt must name the encoder.pt (or .safetensors, .ckpt) written by +exp=encoder_pretrain",
        )
    state, about = read_encoder_state(path)
    bands = getattr(encoder, "in_features", None)
    if bands is not None and about.get("feature_dim", bands) != bands:  # the conv stem fits any band count
        raise ValueError(
            f"{path}: an encoder of {about['feature_dim']} feature bands, and this run's features have {bands}; "
            "use an encoder trained on the same front end (data/features)"
        )
    own = {k: v for k, v in encoder.state_dict().items() if speaker_head or not k.startswith(HEAD)}
    state = {k: v for k, v in state.items() if k in own}  # the speaker head of EncoderPretrain has no place here
    compare_state_dict(
        own,
        state,
        f"{path}: encoder weights do not fit the configured encoder",
        fix="were they trained with the same encoder config?",
    )
    encoder.load_state_dict(state, strict=speaker_head)


class EncoderPretrain(LightningModule):
    def __init__(
        self,
        encoder: dict,  # AudioEncoder config; in_features, num_classes filled in.
        num_classes: int,  # Training speakers.
        feature_dim: int = 64,  # Audio feature bands F.
        lr: float = 1e-3,  # SGD peak learning rate (paper).
        momentum: float = 0.9,  # SGD momentum (paper).
        weight_decay: float = 1e-4,  # SGD weight decay (paper).
        cycle_steps: int = 2500,  # Cosine cycle length in iterations (warm restarts).
        min_lr: float = 0.0,  # Learning rate at the end of each cosine cycle.
        aux: dict | None = None,  # {speaker trait (sex | nationality): loss weight}; None or {}: the paper's loss.
        init: str | None = None,  # Encoder file (or shipped name, e.g. voice_prior_128) to start from; its speaker
        # head is left out (another corpus' speakers). None: random init, the paper's.
    ):
        super().__init__()
        if isinstance(encoder, DictConfig):
            encoder = OmegaConf.to_container(encoder, resolve=True)
        encoder = copy.deepcopy(encoder)
        if num_classes < 2:
            raise ValueError(f"encoder_pretrain: speaker classification needs >= 2 speakers, got {num_classes}")
        self.save_hyperparameters()
        self.encoder = build_network(encoder, "model.encoder", in_features=feature_dim, num_classes=num_classes)
        if init:
            load_encoder_weights(self.encoder, init, speaker_head=False)
        self.aux_heads = nn.ModuleDict()  # built in setup, when the speakers' traits are known

    def setup(self, stage):
        """One linear head per `aux` trait over the training speakers' classes of it (label -> class in a buffer)."""
        if not self.hparams.aux or len(self.aux_heads):
            return
        dm = self.trainer.datamodule
        info, names = dm.speaker_info(), dm.identities("train")
        for trait in self.hparams.aux:
            missing = [n for n in names if trait not in info.get(n, {})]
            if missing:
                raise ValueError(
                    f"encoder_pretrain: aux trait {trait!r} is not in the data's speaker metadata of {len(missing)} "
                    f"training speaker(s), e.g. {missing[0]}"
                )
            values = [str(info[n][trait]) for n in names]
            classes = sorted(set(values))
            self.register_buffer(f"aux_{trait}", torch.tensor([classes.index(v) for v in values]), persistent=False)
            self.aux_heads[trait] = nn.Linear(self.encoder.embed_dim, len(classes))

    def forward(self, audio, lengths=None):
        """audio [B, F, T] -> speaker logits [B, num_classes]."""
        return self.encoder.classify(self.encoder(audio, lengths))

    def training_step(self, batch, batch_idx):
        emb = self.encoder(batch["audio"], batch.get("audio_lengths"))
        logits = self.encoder.classify(emb)
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        n = batch["label"].shape[0]
        for trait, head in self.aux_heads.items():
            aux_loss = F.cross_entropy(head(emb), getattr(self, f"aux_{trait}")[batch["label"]])
            loss = loss + self.hparams.aux[trait] * aux_loss
            self.log(f"train/aux_{trait}", aux_loss, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", acc, prog_bar=True, batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=hp.cycle_steps, eta_min=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def save_encoder(self, path):
        """Write {'encoder': state_dict, 'encoder_config': dict, 'feature_dim': F} (weights_only-safe), and beside
        it the same encoder without its speaker head as .safetensors, the form it is shared and shipped in."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        hp = self.hparams
        torch.save({"encoder": state, "encoder_config": hp.encoder, "feature_dim": hp.feature_dim}, path)
        write_encoder_safetensors(os.path.splitext(path)[0] + ".safetensors", state, hp.encoder, hp.feature_dim)
        return path

    def on_train_end(self):
        if self.trainer.is_global_zero:
            path = self.save_encoder(os.path.join(self.trainer.default_root_dir, ENCODER_FILENAME))
            log.info("encoder weights written to %s", path)
        # Every rank reads the file for stage 2 as soon as fit returns: none may go on before rank 0 has written it
        # (a DDP run under load read it half-written).
        self.trainer.strategy.barrier("stage 1 encoder written")
