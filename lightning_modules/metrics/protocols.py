"""The field's identity protocols beside ours (`metrics.identity.protocol`), in any face-embedding space.

- SF2F (Bai et al., "Speech Fusion to Face"): one generated face per test identity, its cosine similarity and L1 /
  L2 distances to the identity's mean real embedding, and Recall@k in *fixed* galleries: blocks of 100
  consecutive identities of the sorted test split, the last block moved back so that every block is full (189
  identities: 0-99 and 89-188). Each face is ranked against the mean real embeddings of its block.
- Wen et al. (2019), 1:2 matching: a generated face is the probe, with one real face of its speaker and one of an
  impostor; a hit when the probe is closer (cosine) to the speaker's face. Impostors and faces are drawn with a
  fixed seed; the sex-matched variant draws impostors of the speaker's sex. Chance is 1/2.
Ours (random galleries per utterance, `identity.retrieval_hits`) stays the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PROTOCOLS = ("ours", "sf2f", "wen")


def gallery_blocks(num_ids: int, size: int = 100) -> list[range]:
    """Fixed blocks of `size` consecutive identity indices covering 0..num_ids-1, the last one ending at the last
    identity (so blocks may overlap, never run short); one block of all of them when there are at most `size`."""
    if num_ids <= size:
        return [range(num_ids)]
    starts = list(range(0, num_ids - size + 1, size))
    if starts[-1] + size < num_ids:
        starts.append(num_ids - size)
    return [range(s, s + size) for s in starts]


def one_per_identity(labels: Tensor, seed: int = 0) -> Tensor:
    """Index of one sample per identity present in `labels` (drawn with `seed`), in identity order."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for i in torch.unique(labels).tolist():
        members = torch.nonzero(labels == i).flatten()
        picks.append(members[torch.randint(len(members), (1,), generator=g)])
    return torch.cat(picks)


def sf2f_scores(
    query_emb: Tensor,  # [N, D] one generated face per identity (any order)
    query_labels: Tensor,  # [N] their identities, each once
    centers: Tensor,  # [C, D] mean real embedding of every identity (identity.centroids)
    block: int = 100,  # identities per gallery block
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50),
) -> tuple[dict[str, Tensor], Tensor, int]:
    """Per-query cosine / L1 / L2 to its identity's center, and the hits of each (block, query) pair:
    ({"cosine" | "L1" | "L2": [N], "recall@k": [P]}, identity of each of the P pairs, block size used). Ranks count
    ties against the query; a k at or above the block size is left out (it would be 1 by construction)."""
    if len(torch.unique(query_labels)) != len(query_labels):
        raise ValueError("sf2f: one generated face per identity, got repeated identities")
    q = F.normalize(query_emb.float(), dim=1)
    own = centers.float()[query_labels]
    out = {
        "cosine": F.cosine_similarity(q, own, dim=1),
        "L1": (q - own).abs().sum(dim=1),
        "L2": (q - own).norm(dim=1),
    }
    sim = q @ F.normalize(centers.float(), dim=1).T  # [N, C]
    blocks = gallery_blocks(centers.shape[0], block)
    size = len(blocks[0])
    hits = {k: [] for k in ks if k < size}
    pair_ids = []
    for members in blocks:
        ids = torch.tensor(list(members))
        inside = torch.isin(query_labels, ids)
        scores = sim[inside][:, ids]  # [n, size]
        true = scores.gather(1, (query_labels[inside] - members.start)[:, None])
        rank = (scores >= true).sum(dim=1) - 1  # others scoring at least the true identity
        for k in hits:
            hits[k].append((rank < k).double())
        pair_ids.append(query_labels[inside])
    out.update({f"recall@{k}": torch.cat(h) for k, h in hits.items()})
    return out, torch.cat(pair_ids), size


def wen_matches(
    query_emb: Tensor,  # [N] generated faces' embeddings
    query_labels: Tensor,  # [N] their identities
    real_emb: Tensor,  # [M, D] real faces' embeddings
    real_labels: Tensor,  # [M] their identities
    sexes: list[str] | None = None,  # sex of each identity index, for sex-matched impostors; None: any impostor
    repeats: int = 10,  # impostor draws per query
    seed: int = 0,
) -> Tensor:
    """[N] fraction of the `repeats` 1:2 trials each query wins: closer (cosine) to a real face of its speaker than
    to a real face of an impostor (another identity, of the same sex when `sexes` is given); ties lose. A query
    without any possible impostor gets NaN."""
    q = F.normalize(query_emb.float(), dim=1)
    r = F.normalize(real_emb.float(), dim=1)
    faces_of = {int(i): torch.nonzero(real_labels == i).flatten() for i in torch.unique(real_labels)}
    ids = sorted(faces_of)
    g = torch.Generator().manual_seed(seed)
    wins = torch.zeros(len(q), dtype=torch.float64)
    for n, label in enumerate(query_labels.tolist()):
        impostors = [i for i in ids if i != label and (sexes is None or sexes[i] == sexes[label])]
        if not impostors:
            wins[n] = float("nan")
            continue
        for _ in range(repeats):
            other = impostors[int(torch.randint(len(impostors), (1,), generator=g))]
            own_face = faces_of[label][torch.randint(len(faces_of[label]), (1,), generator=g)]
            other_face = faces_of[other][torch.randint(len(faces_of[other]), (1,), generator=g)]
            wins[n] += float((q[n] @ r[own_face].T) > (q[n] @ r[other_face].T))
    return wins / repeats
