"""Training callbacks of voice2face that Lightning does not ship."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Callback


def images_seen(trainer, pl_module) -> int:
    """Training images so far: the GAN's own counter (global_step counts every optimizer step under manual
    optimisation), else optimizer steps for modules without one (encoder pretraining)."""
    return int(getattr(pl_module, "cur_nimg", trainer.global_step))


class KimgCheckpoint(Callback):
    """`last.ckpt` every `last_every_kimg` and `snapshot-<kimg>.ckpt` every `every_kimg`, plus `last.ckpt` at the
    end; each written to a temporary file and renamed, so a crash never leaves a half-written checkpoint."""

    def __init__(
        self,
        dirpath: str,                   # Checkpoint folder (the run's checkpoints/).
        every_kimg: float = 50.0,       # Kept snapshots; 0 = none.
        last_every_kimg: float = 5.0,   # Overwritten resume point; 0 = only at the end.
    ):
        self.dirpath = Path(dirpath)
        self.every = every_kimg * 1000
        self.last_every = last_every_kimg * 1000
        self._next = {}

    @staticmethod
    def _after(nimg: int, every: float) -> float:
        return (nimg // every + 1) * every if every > 0 else float("inf")

    def on_train_start(self, trainer, pl_module):
        nimg = images_seen(trainer, pl_module)
        self._next = {"snapshot": self._after(nimg, self.every), "last": self._after(nimg, self.last_every)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        nimg = images_seen(trainer, pl_module)
        if nimg >= self._next["snapshot"]:
            self.save(trainer, f"snapshot-{nimg / 1000:09.3f}kimg.ckpt")
            self._next["snapshot"] = self._after(nimg, self.every)
        if nimg >= self._next["last"]:
            self.save(trainer, "last.ckpt")
            self._next["last"] = self._after(nimg, self.last_every)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, "last.ckpt")

    def save(self, trainer, name: str) -> Path:
        """Every rank calls save_checkpoint (it is collective under DDP); rank 0 writes and renames."""
        path = self.dirpath / name
        tmp = path.with_name(f".{name}.tmp")
        if trainer.is_global_zero:
            try:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(f"checkpoint folder {self.dirpath} is not writable ({err}); "
                              f"set callbacks.checkpoint.dirpath or paths.root_dir to a writable place") from err
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("kimg_checkpoint")
        return path
