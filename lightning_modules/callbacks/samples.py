"""Sample grids of held-out speakers: one speaker per row, their real face and then the faces generated from
`per_speaker` different utterances, so it shows both whether the faces look like faces and whether they stay
that speaker's. Rows are ordered round-robin over (nationality, sex) groups, so both sexes and several accents
appear in the first rows."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from lightning_modules.callbacks.schedule import next_due


def speaker_order(names: list[str], info: dict[str, dict]) -> list[str]:
    """`names` round-robin over their (nationality, sex) groups (groups and members in sorted order); names
    without info form one group of their own."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(names):
        meta = info.get(name, {})
        groups.setdefault((meta.get("nationality", ""), meta.get("sex", "")), []).append(name)
    queues = [groups[k] for k in sorted(groups)]
    order = []
    for rank in range(max(map(len, queues), default=0)):
        order += [q[rank] for q in queues if rank < len(q)]
    return order


def collect_speakers(loader, names: list[str], info: dict[str, dict], count: int, per_speaker: int) -> dict | None:
    """Up to `per_speaker` utterances and one real face for each of `count` speakers of a held-out loader
    (batches with audio, audio_lengths, face, label = index into `names`), in `speaker_order`. Speakers with
    fewer utterances repeat their last one. Returns {audio [R·U, F, T], audio_lengths [R·U], face [R, 3, S, S],
    names [R]} or None for an empty loader."""
    clips: dict[int, list[Tensor]] = {}
    faces: dict[int, Tensor] = {}
    for batch in loader:
        for i, label in enumerate(batch["label"].tolist()):
            if len(clips.setdefault(label, [])) < per_speaker:
                clips[label].append(batch["audio"][i, :, : int(batch["audio_lengths"][i])])
                faces.setdefault(label, batch["face"][i])
    if not clips:
        return None
    chosen = speaker_order([names[label] for label in clips], info)[:count]
    labels = [names.index(n) for n in chosen]
    rows = [(clips[lab] + [clips[lab][-1]] * per_speaker)[:per_speaker] for lab in labels]
    audio = [a for row in rows for a in row]
    frames = max(a.shape[1] for a in audio)
    return {
        "audio": torch.stack([F.pad(a, (0, frames - a.shape[1])) for a in audio]),
        "audio_lengths": torch.tensor([a.shape[1] for a in audio]),
        "face": torch.stack([faces[lab] for lab in labels]),
        "names": chosen,
    }


def speaker_grid(real: Tensor, fake: Tensor, pad: int = 2) -> Tensor:
    """[R, 3, S, S] real faces and [R·U, 3, S, S] generated ones -> one image [3, H, W] in [0, 1]: a row per
    speaker (real | U generated), with a wider gap after the real face."""
    rows, per = real.shape[0], fake.shape[0] // real.shape[0]
    assert fake.shape[0] == rows * per and fake.shape[1:] == real.shape[1:], f"{list(real.shape)} vs {list(fake.shape)}"
    size = real.shape[-1]
    tiles = torch.cat([real[:, None], fake.view(rows, per, *fake.shape[1:])], dim=1)  # [R, 1 + U, 3, S, S]
    tiles = ((tiles.float() + 1) / 2).clamp(0, 1)
    height = rows * (size + pad) + pad
    width = (1 + per) * (size + pad) + 2 * pad
    grid = torch.ones(3, height, width)
    for r in range(rows):
        for c in range(1 + per):
            y = pad + r * (size + pad)
            x = pad + c * (size + pad) + (2 * pad if c > 0 else 0)
            grid[:, y : y + size, x : x + size] = tiles[r, c]
    return grid


class SampleGrids(Callback):
    """`speaker_grid`s of held-out speakers from G_ema, when training starts, every `every_kimg` and at the end,
    into <run dir>/samples/samples_<kimg>kimg.png and W&B. The module needs `generate(audio, lengths)` and a
    `cur_nimg` counter. Without a held-out loader the grid shows the first training batch's voices, one face each."""

    def __init__(
        self,
        every_kimg: float = 5.0,  # Grid interval in thousands of images (0 = only at start and end).
        count: int = 16,  # Held-out speakers (rows); 0 = no grids.
        utterances: int = 3,  # Faces per speaker, each from another utterance.
    ):
        self.every, self.count, self.utterances = every_kimg * 1000, count, utterances
        self.batch = None
        self._next = 0

    def on_train_start(self, trainer, pl_module):
        dm = getattr(trainer, "datamodule", None)
        if self.count > 0 and dm is not None and is_overridden("val_dataloader", dm):
            info = dm.speaker_info() if hasattr(dm, "speaker_info") else {}
            with torch.random.fork_rng(devices=[]):  # a loader iterator draws a seed: keep the data stream intact
                loader = dm.val_dataloader()
                names = dm.identities("val") if hasattr(dm, "identities") else None
                names = names or [str(i) for i in range(len(loader.dataset))]
                self.batch = collect_speakers(loader, names, info, self.count, self.utterances)
        self._next = next_due(pl_module.cur_nimg, self.every)
        self.save(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None and self.count > 0:
            n = self.count
            self.batch = {
                **{k: batch[k][:n].detach().cpu() for k in ("audio", "audio_lengths", "face")},
                "names": [str(int(v)) for v in batch["label"][:n]],
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.cur_nimg >= self._next:
            self.save(trainer, pl_module)
            self._next = next_due(pl_module.cur_nimg, self.every)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> str | None:
        """Write the grid at the module's current kimg; returns its path (None on other ranks or with no grid)."""
        if self.batch is None or not trainer.is_global_zero:
            return None
        import torchvision.utils as vutils

        was_training = pl_module.training
        pl_module.eval()  # the encoder's batch norm in inference mode
        with torch.random.fork_rng(devices=[]):  # sampling must not shift the RNG streams (exact resume)
            audio, lengths = self.batch["audio"].to(pl_module.device), self.batch["audio_lengths"].to(pl_module.device)
            fake = pl_module.generate(audio, lengths, noise_mode="const").float().cpu()
        pl_module.train(was_training)
        grid = speaker_grid(self.batch["face"], fake)
        kimg = pl_module.cur_nimg / 1000
        path = os.path.join(trainer.default_root_dir, "samples", f"samples_{kimg:08.3f}kimg.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        vutils.save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = f"real | generated from held-out utterances, {kimg:.2f} kimg"
                logger.log_image(key="samples", images=[grid], caption=[caption])
        return path
