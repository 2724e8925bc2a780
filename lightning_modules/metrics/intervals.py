"""95 % bootstrap intervals over identities: the unit of sampling of a voice-to-face evaluation is the speaker,
not the utterance (a speaker's utterances are not independent draws), so identities are resampled with
replacement and each resample keeps all utterances of the identities it drew."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def bootstrap_ci(
    score: Callable[[Tensor], float],  # sample indices (with repeats) -> score of those samples
    groups: Tensor,  # [N] identity of each sample
    resamples: int = 1000,  # bootstrap resamples
    seed: int = 0,
    level: float = 0.95,
) -> list[float]:
    """[low, high] percentile interval of `score` over resampled identities; resamples where the score is
    undefined (NaN, e.g. an R² over constant targets) are left out. Below two identities there is nothing to
    resample, so no interval: [NaN, NaN], not a zero-width one that would look certain."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    if len(ids) < 2:
        return [float("nan"), float("nan")]
    members = [torch.nonzero(inverse == i).flatten() for i in range(len(ids))]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        drawn = torch.randint(len(ids), (len(ids),), generator=g)
        value = score(torch.cat([members[int(i)] for i in drawn]))
        if value == value:  # not NaN
            values.append(value)
    if not values:
        return [float("nan"), float("nan")]
    v = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    return [float(v.quantile(tail)), float(v.quantile(1 - tail))]
