"""Training and evaluation items and their batches: the rules both sources (shards, stream) follow.

Train: a random window of at most `max_frames` of a clip and a random face of the same identity; the batch then
crops every clip to one length drawn from [min_frames, max_frames]. Eval: the whole utterance (tiled when short,
VoicePipeline.model_input) and a fixed face, clip c of an identity with K faces taking face c mod K.
Batches: {audio [B, F, T], audio_lengths [B], face float [-1, 1] [B, 3, S, S], label [B]}.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from datamodules.audio import random_crop_batch
from datamodules.faces import normalize


def random_window(feats: Tensor, max_frames: int, generator: torch.Generator | None = None) -> Tensor:
    """A random run of at most max_frames frames of one clip [F, T] (a view: an mmap'd shard copies only that)."""
    T = feats.shape[1]
    start = int(torch.randint(0, max(T - max_frames, 0) + 1, (), generator=generator))
    return feats[:, start : start + min(max_frames, T)]


def train_item(feats: Tensor, faces: Tensor, max_frames: int, generator: torch.Generator | None = None):
    """(float32 window of a clip, one of the identity's faces [3, S, S]), both drawn at random."""
    window = random_window(feats, max_frames, generator)
    return window.float(), faces[int(torch.randint(0, len(faces), (), generator=generator))].clone()


def eval_face_index(clip: int, num_faces: int) -> int:
    """The fixed face of clip `clip` of an identity with `num_faces` faces."""
    return clip % num_faces


def collate_train(items, min_frames: int = 300, max_frames: int = 800, generator: torch.Generator | None = None):
    """One crop length for the batch, a random window per clip; items are (feats, face, label)."""
    feats, faces, labels = zip(*items)
    audio, lengths = random_crop_batch(list(feats), min_frames, max_frames, generator=generator)
    return {
        "audio": audio,
        "audio_lengths": lengths,
        "face": normalize(torch.stack(faces)),
        "label": torch.tensor(labels),
    }


def collate_eval(items):
    """Whole utterances, zero-padded to the longest, with their lengths; items are (feats, face, label[, seed])."""
    feats, faces, labels = zip(*(item[:3] for item in items))
    lengths = torch.tensor([f.shape[1] for f in feats])
    audio = torch.zeros(len(feats), feats[0].shape[0], int(lengths.max()))
    for j, f in enumerate(feats):
        audio[j, :, : f.shape[1]] = f
    return {
        "audio": audio,
        "audio_lengths": lengths,
        "face": normalize(torch.stack(faces)),
        "label": torch.tensor(labels),
    }


class TrainCollate:
    """collate_train with the crop range bound (a picklable collate_fn for worker processes). With `seeded`, items
    carry a seed as their 4th entry and the batch's crop length is drawn from the first one's, so it follows the
    data rather than the process RNG (the stream's rule: a resumed run sees the same batches)."""

    def __init__(self, min_frames: int, max_frames: int, seeded: bool = False):
        self.min_frames, self.max_frames, self.seeded = min_frames, max_frames, seeded

    def __call__(self, items):
        if not self.seeded:
            return collate_train(items, self.min_frames, self.max_frames)
        from_data = torch.Generator().manual_seed(item_seed("batch", items[0][3]))
        return collate_train([item[:3] for item in items], self.min_frames, self.max_frames, generator=from_data)


def item_seed(*keys) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): the same on every worker, rank and resume."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1
