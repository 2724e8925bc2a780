"""What evaluation reads of a held-out split: its voices' embeddings, one generated face per utterance, and the
real faces, with identity labels."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lightning_modules.nets.latent import unconditional


def as_dict(cfg: Mapping | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def balanced_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Sorted indices of about `n` samples with the same number from every identity (n // identities each, at
    least one; all of an identity that has fewer), drawn with `seed`: a budget spread over the speakers rather
    than the first n of a name-sorted loader."""
    ids = torch.unique(labels)
    per = max(1, n // len(ids))
    g = torch.Generator().manual_seed(seed)
    picks = []
    for i in ids:
        members = torch.nonzero(labels == i).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per]])
    return torch.cat(picks).sort().values


@torch.no_grad()
def embed_split(model, datamodule, split: str = "test", max_utterances: int | None = None, seed: int = 0):
    """The voice embedding of every utterance of `split` ([N, embed_dim] float on CPU) and identity labels [N];
    with `max_utterances`, a subset balanced over identities (`balanced_subset`, drawn with `seed`)."""
    if split not in ("val", "test"):
        raise ValueError(f"evaluate: split must be 'val' or 'test', got {split!r}")
    loader = getattr(datamodule, f"{split}_dataloader")
    was_training = model.training
    model.eval()
    embs, labels = [], []
    for batch in loader():
        embs.append(model.embed(batch["audio"].to(model.device), batch["audio_lengths"].to(model.device)).float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    if not embs:
        raise ValueError(f"evaluate: the {split} loader yielded no batches")
    embs, labels = torch.cat(embs), torch.cat(labels)
    if max_utterances is not None and max_utterances < len(labels):
        keep = balanced_subset(labels, max_utterances, seed)
        embs, labels = embs[keep], labels[keep]
    return embs, labels


@torch.no_grad()
def generate_split(model, datamodule, split: str = "test", max_utterances: int | None = None, embedded=None):
    """One generated face per utterance of `split` (EMA generator, constant noise): ([-1, 1] float [N,3,S,S] on
    CPU, identity labels [N]). embedded: the split's (embeddings, labels) from embed_split, if already made."""
    emb, labels = embedded if embedded is not None else embed_split(model, datamodule, split, max_utterances)
    was_training = model.training
    model.eval()
    size = getattr(datamodule, "eval_batch_size", 16)
    imgs = [model.generate_from(e.to(model.device), noise_mode="const").float().cpu() for e in emb.split(size)]
    model.train(was_training)
    return torch.cat(imgs), labels


@torch.no_grad()
def prior_faces(model, num: int, seed: int, batch: int = 64) -> Tensor | None:
    """`num` faces of the pretrained generator alone ([-1, 1] float [num,3,S,S] on CPU): random z through its own
    mapping, drawn with `seed`, constant noise. None unless the model's G is a pretrained one that stayed frozen
    (model.generator_init with generator_train=frozen): a fine-tuned G is no longer the prior."""
    hp = model.hparams
    if not hp.get("generator_init") or hp.get("generator_train") != "frozen":
        return None
    G = model.G_ema
    mapping = unconditional(G)
    z = torch.randn([num, mapping.z_dim], generator=torch.Generator().manual_seed(seed))
    ws = [mapping(part.to(model.device)) for part in z.split(batch)]
    return torch.cat([G.synthesis(w, noise_mode="const").float().cpu() for w in ws])


def real_faces(datamodule, split: str) -> tuple[Tensor, Tensor, list[str]]:
    """All real faces of `split` as uint8 [M,3,S,S], their identity labels (index in identities(split))."""
    names = list(datamodule.identities(split))
    faces = datamodule.faces(split)
    missing = [n for n in names if n not in faces]
    if missing:
        raise ValueError(f"evaluate: no real faces for {split} identities {missing[:5]}")
    stack = torch.cat([faces[n] for n in names])
    labels = torch.cat([torch.full((len(faces[n]),), i) for i, n in enumerate(names)])
    return stack, labels, names


def batches(x: Tensor, size: int) -> Iterator[Tensor]:
    yield from x.split(size)
