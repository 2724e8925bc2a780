"""Exact resume on one process: the RNG streams and the position inside an epoch, which Lightning does not restore.

Lightning restores weights, optimisers and loop counters, but neither the RNG nor the position inside an epoch (it
restarts the epoch's data iterator). So the torch RNG is split into two streams: the training steps run on their
own stream (swapped in around each batch), and the global generator is left to the data pipeline (shuffling,
crops), which then depends only on its state when the epoch's iterator was made. The checkpoint stores both
streams, that epoch-start state and the batches done; a resume rewinds the data stream to the epoch start and
drops the batches already trained on.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.callbacks.checkpoint import KimgCheckpoint


class ExactResume(Callback):
    """The RNG streams and epoch position of a run, saved with every checkpoint and put back on resume.

    It must come before every callback that saves checkpoints in `trainer.callbacks` (conf/callbacks lists it
    first): a checkpoint written at the end of a batch has to count that batch as done."""

    def __init__(self):
        self._train_rng = None  # torch CPU RNG state of the training stream
        self._epoch_rng = None  # global RNG state before the current epoch's iterator was made
        self._batches_done = 0  # batches of the current epoch already trained on
        self._epoch_batches = 0  # batches in an epoch
        self._skip = 0  # batches to drop from the epoch's iterator after a resume
        self._batches_this_fit = 0
        self._data_rng = None  # global RNG state (data stream) while a batch trains
        self._in_batch = False
        self._resume_data_rng = None

    def setup(self, trainer, pl_module, stage):
        savers = (KimgCheckpoint, ModelCheckpoint)
        first = [type(c).__name__ for c in trainer.callbacks[: trainer.callbacks.index(self)] if isinstance(c, savers)]
        if first:
            raise ValueError(
                f"config: callbacks: ExactResume must come before {', '.join(first)} (a checkpoint saved at a "
                "batch's end would miss that batch); list `resume` first in callbacks"
            )

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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._train_rng = torch.get_rng_state()
        torch.set_rng_state(self._data_rng)
        self._in_batch = False
        self._batches_done += 1  # not batch_idx: Lightning numbers a resumed epoch from 0 after a stop at train end
        self._batches_this_fit += 1
        n = trainer.num_training_batches
        self._epoch_batches = int(n) if math.isfinite(n) else 0  # unsized loaders: a resume starts a new epoch
