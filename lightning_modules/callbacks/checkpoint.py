"""Training callbacks of voice2face that Lightning does not ship."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback

from datamodules.files import remove_dead_temporaries, write_atomic
from lightning_modules.callbacks.schedule import next_due


def images_seen(trainer, pl_module) -> int:
    """Training images so far: the GAN's own counter (global_step counts every optimizer step under manual
    optimisation), else optimizer steps for modules without one (encoder pretraining)."""
    return int(getattr(pl_module, "cur_nimg", trainer.global_step))


class BadStepsError(FloatingPointError):
    """Too many optimizer steps in a row had non-finite losses or gradients. The module raises it; the checkpoint
    callback saves the last good state (the skipped steps left it untouched) in `on_exception` and names it."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix
        self.checkpoint: Path | None = None  # set by KimgCheckpoint.on_exception

    def __str__(self):
        if self.checkpoint is None:
            return f"{self.what} No checkpoint callback ran, so no state was saved. {self.fix}."
        return (
            f"{self.what} The last good state is in {self.checkpoint}. {self.fix}, then resume with "
            f"ckpt_path={self.checkpoint}."
        )


class KimgCheckpoint(Callback):
    """`last.ckpt` every `last_every_kimg` and `snapshot-<kimg>.ckpt` every `every_kimg`, plus `last.ckpt` at the
    end; each written to a temporary file and renamed, so a crash never leaves a half-written checkpoint. A run
    stopped by BadStepsError gets `last-good.ckpt`. What makes a resume from these exact (the RNG streams, the
    position in the epoch) is `lightning_modules.callbacks.resume.ExactResume`'s state, saved with them."""

    def __init__(
        self,
        dirpath: str,  # Checkpoint folder (the run's checkpoints/).
        every_kimg: float = 50.0,  # Kept snapshots; 0 = none.
        last_every_kimg: float = 5.0,  # Overwritten resume point; 0 = only at the end.
    ):
        self.dirpath = Path(dirpath)
        self.every = every_kimg * 1000
        self.last_every = last_every_kimg * 1000
        self._next = {}

    def on_train_start(self, trainer, pl_module):
        nimg = images_seen(trainer, pl_module)
        self._next = {"snapshot": next_due(nimg, self.every), "last": next_due(nimg, self.last_every)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        nimg = images_seen(trainer, pl_module)
        if nimg >= self._next["snapshot"]:
            self.save(trainer, f"snapshot-{nimg / 1000:09.3f}kimg.ckpt")
            self._next["snapshot"] = next_due(nimg, self.every)
        if nimg >= self._next["last"]:
            self.save(trainer, "last.ckpt")
            self._next["last"] = next_due(nimg, self.last_every)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, "last.ckpt")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, BadStepsError):  # still inside the batch: ExactResume keeps the RNG streams apart
            exception.checkpoint = self.save(trainer, "last-good.ckpt")

    def save(self, trainer, name: str) -> Path:
        """Every rank calls save_checkpoint (it is collective under DDP); rank 0 writes, atomically."""
        path = self.dirpath / name
        if not trainer.is_global_zero:
            trainer.save_checkpoint(path, weights_only=False)  # takes part; only rank 0 writes
        else:
            try:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(
                    f"checkpoint folder {self.dirpath} is not writable ({err}); "
                    f"set callbacks.checkpoint.dirpath or paths.root_dir to a writable place"
                ) from err
            remove_dead_temporaries(path)
            # the full state, a resume point; a failed save (disk full, ...) leaves the previous one and no partial
            write_atomic(path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        trainer.strategy.barrier("kimg_checkpoint")
        return path
