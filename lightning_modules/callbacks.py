"""Training callbacks of voice2face that Lightning does not ship."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback

from lightning_modules.schedule import next_due


def images_seen(trainer, pl_module) -> int:
    """Training images so far: the GAN's own counter (global_step counts every optimizer step under manual
    optimisation), else optimizer steps for modules without one (encoder pretraining)."""
    return int(getattr(pl_module, "cur_nimg", trainer.global_step))


def remove_dead_temporaries(folder: Path, name: str) -> None:
    """Remove `.<name>.<pid>.tmp` files of processes that are gone (a run killed mid-save leaves one)."""
    for tmp in folder.glob(f".{name}.*.tmp"):
        try:
            os.kill(int(tmp.name[len(name) + 2 : -4]), 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            continue  # a live process of another user


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
    end; each written to a temporary file and renamed, so a crash never leaves a half-written checkpoint.

    It also makes a resume exact on one process. Lightning restores weights, optimisers and loop counters but
    neither the RNG nor the position inside an epoch (it restarts the epoch's data iterator). So the torch RNG is
    split into two streams: the training steps run on their own stream (swapped in around each batch), and the
    global generator is left to the data pipeline (shuffling, crops), which then depends only on its state when
    the epoch's iterator was made. The checkpoint stores both streams, that epoch-start state and the batches done;
    a resume rewinds the data stream to the epoch start, and drops the batches already trained on.
    """

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
        self._train_rng = None  # torch CPU RNG state of the training stream
        self._epoch_rng = None  # global RNG state before the current epoch's iterator was made
        self._batches_done = 0  # batches of the current epoch already trained on
        self._epoch_batches = 0  # batches in an epoch
        self._skip = 0  # batches to drop from the epoch's iterator after a resume
        self._batches_this_fit = 0
        self._data_rng = None  # global RNG state (data stream) while a batch trains
        self._in_batch = False
        self._resume_data_rng = None

    # ------------------------------------------------------------------ exact resume
    def state_dict(self):
        now = torch.get_rng_state()  # inside a batch (a stop on bad steps saves there) it is the training stream
        state = {
            "train_rng": now if self._in_batch else self._train_rng,
            "epoch_rng": self._epoch_rng,
            "data_rng": self._data_rng if self._in_batch else now,
            "batches_done": self._batches_done,
            "epoch_batches": self._epoch_batches,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state):
        """Runs while Lightning restores, before it makes the epoch's data iterator."""
        self._train_rng = state["train_rng"]
        self._epoch_rng = state["epoch_rng"]
        self._batches_done = int(state["batches_done"])
        self._epoch_batches = int(state["epoch_batches"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self._resume_data_rng = state["data_rng"]

    def on_fit_start(self, trainer, pl_module):
        resumed = self._resume_data_rng
        if resumed is not None:
            epoch_done = self._batches_done >= self._epoch_batches
            # A finished epoch: the next one starts from the data stream as it was; else replay this epoch.
            torch.set_rng_state(resumed if epoch_done or self._epoch_rng is None else self._epoch_rng)
            self._skip = self._batches_done = 0 if epoch_done else self._batches_done
            self._resume_data_rng = None
        if self._train_rng is None:
            self._train_rng = torch.Generator().manual_seed(torch.initial_seed() + 1).get_state()
        self._epoch_rng = torch.get_rng_state()  # the first epoch's iterator is made right after fit starts
        self._batches_this_fit = 0

    def on_train_epoch_start(self, trainer, pl_module):
        # The first epoch of a fit got its iterator when fit started (and a mid-epoch resume skips this hook);
        # later epochs make theirs after this hook.
        if self._batches_this_fit > 0:
            self._epoch_rng = torch.get_rng_state()
            self._batches_done = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._data_rng = torch.get_rng_state()
        torch.set_rng_state(self._train_rng)
        self._in_batch = True

    # ------------------------------------------------------------------ checkpoints
    def on_train_start(self, trainer, pl_module):
        # Lightning restarts a mid-epoch resume without on_train_epoch_start, so the replay happens here. Later
        # on_train_start hooks must not draw from the global RNG (Voice2FaceGAN forks it for its sample batch).
        if self._skip and getattr(trainer.train_dataloader, "restore", False):
            self._skip = 0  # Lightning put litdata's loader back at its position (a resume mid-epoch)
        if self._skip:  # drop the batches trained on before the interruption (made from the same data stream)
            iterator = trainer.fit_loop._data_fetcher.iterator
            for _ in range(self._skip):
                next(iterator)
            self._skip = 0
        nimg = images_seen(trainer, pl_module)
        self._next = {"snapshot": next_due(nimg, self.every), "last": next_due(nimg, self.last_every)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._train_rng = torch.get_rng_state()
        torch.set_rng_state(self._data_rng)
        self._in_batch = False
        self._batches_done += 1  # not batch_idx: Lightning numbers a resumed epoch from 0 after a stop at train end
        self._batches_this_fit += 1
        n = trainer.num_training_batches
        self._epoch_batches = int(n) if math.isfinite(n) else 0  # unsized loaders: a resume starts a new epoch
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
        if isinstance(exception, BadStepsError):  # still inside the batch: state_dict keeps the RNG streams apart
            exception.checkpoint = self.save(trainer, "last-good.ckpt")

    def save(self, trainer, name: str) -> Path:
        """Every rank calls save_checkpoint (it is collective under DDP); rank 0 writes and renames."""
        path = self.dirpath / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")  # two processes never share a temporary file
        if trainer.is_global_zero:
            try:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(
                    f"checkpoint folder {self.dirpath} is not writable ({err}); "
                    f"set callbacks.checkpoint.dirpath or paths.root_dir to a writable place"
                ) from err
        if trainer.is_global_zero:
            remove_dead_temporaries(self.dirpath, name)
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # the full state: a resume point
            if trainer.is_global_zero:
                os.replace(tmp, path)
        finally:  # a failed save (disk full, ...) leaves the previous checkpoint and no partial file
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
        trainer.strategy.barrier("kimg_checkpoint")
        return path
