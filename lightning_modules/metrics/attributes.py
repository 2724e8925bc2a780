"""Attribute recovery on the embedded corpus: can a probe trained on real faces read an identity's traits
(attributes.csv) off the faces generated from that identity's held-out voices?

Per attribute six numbers: the score on generated faces with its 95 % bootstrap interval over identities
(`/ci95`); chance (always predicting the train majority class / the train mean); shuffled (the same generated
predictions scored against the traits of randomly permuted identities: what a generator that ignores the voice
would get, faces that all look alike included); and the oracle (the same probe on the real faces of the same
identities); and the group bound (below: what a model that heard only sex and accent and learned their odds from
the train split would do). A model hears a trait when its score beats `shuffled`, and clearly so when the
interval's lower end does.
Categorical -> accuracy; continuous -> R² (1 − SS_res / SS_tot around the evaluated targets' mean).
A continuous trait whose oracle R² is below WEAK_ORACLE_R2 cannot be read off even the real faces by this probe
(the voice-only traits pitch, pitch range and rate are of this kind), so a score on generated faces would say
nothing about the generator: such traits are reported under `attr_weak/` and left out of summaries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.metrics.intervals import bootstrap_ci
from lightning_modules.metrics.probe import AttributeCodec, FaceProbe

WEAK_ORACLE_R2 = 0.3


def r2_score(pred: Tensor, target: Tensor) -> float:
    """R²; NaN when all targets are equal (undefined)."""
    target = target.double()
    ss_tot = (target - target.mean()).square().sum()
    if ss_tot == 0:
        return float("nan")
    return float(1 - (target - pred.double()).square().sum() / ss_tot)


def trait_score(kind: str, pred: Tensor, target: Tensor) -> float:
    """Accuracy (categorical) or R² (continuous) of `pred` against `target`."""
    return float((pred == target).double().mean()) if kind == "categorical" else r2_score(pred, target)


def shuffled_score(kind: str, pred: Tensor, target: Tensor, names: list[str], repeats: int = 200) -> float:
    """Mean score of `pred` against targets whose identities were randomly permuted (seeded, so repeatable)."""
    ids = sorted(set(names))
    index = torch.tensor([ids.index(n) for n in names])
    per_id = torch.stack([target[index == i][0] for i in range(len(ids))])
    g = torch.Generator().manual_seed(0)
    scores = [trait_score(kind, pred, per_id[torch.randperm(len(ids), generator=g)][index]) for _ in range(repeats)]
    return float(sum(scores) / len(scores))


def identity_groups(names: list[str]) -> Tensor:
    """[N] the index of each row's identity among the sorted identities: the resampling units of an interval."""
    ids = sorted(set(names))
    return torch.tensor([ids.index(n) for n in names])


def scored(
    key: str, kind: str, pred: Tensor, target: Tensor, chance: Tensor, names: list[str], groups: Tensor, resamples: int
) -> dict[str, float]:
    """`key`: the score of `pred`, with `/ci95` over identities (`groups`; none when resamples is 0), `/chance` (the
    score of the `chance` prediction) and `/shuffled`."""
    out = {key: trait_score(kind, pred, target)}
    if resamples > 0:
        out[f"{key}/ci95"] = bootstrap_ci(lambda i: trait_score(kind, pred[i], target[i]), groups, resamples)
    out[f"{key}/chance"] = trait_score(kind, chance, target)
    out[f"{key}/shuffled"] = shuffled_score(kind, pred, target, names)
    return out


def group_bound(
    kind: str,
    values: Tensor,
    names: list[str],
    reference: Tensor,
    reference_names: list[str],
    attributes: dict[str, dict],
    by: tuple[str, ...],
) -> Tensor:
    """Per row of `names`, the best guess from its identity's group alone (the same values of `by`, e.g. sex and
    nationality): the mode (categorical) or mean (continuous) of `reference` (encoded train values, one per
    reference identity) over the train identities of that group; the whole train set for a group with none."""
    group = lambda n: tuple(attributes[n][k] for k in by)  # noqa: E731
    keys = [group(n) for n in reference_names]

    def guess(rows: Tensor) -> Tensor:
        return rows.mode().values if kind == "categorical" else rows.float().mean()

    fallback = guess(reference)
    cache = {}
    for g in set(map(group, names)):
        rows = reference[torch.tensor([k == g for k in keys], dtype=torch.bool)]
        cache[g] = guess(rows) if len(rows) else fallback
    return torch.stack([cache[group(n)] for n in names]).to(values.dtype)


def attribute_scores(
    probe: FaceProbe,
    codec: AttributeCodec,
    generated: Tensor,
    generated_names: list[str],
    real: Tensor,
    real_names: list[str],
    attributes: dict[str, dict],
    skipped: dict[str, str] | None = None,
    resamples: int = 1000,
    train_names: list[str] | None = None,  # train identities, for the `/group` bound
    group_by: tuple[str, ...] = ("sex", "nationality"),
) -> dict[str, float]:
    """Scores keyed `attr/<name>`, `attr/<name>/ci95`, `attr/<name>/chance`, `attr/<name>/shuffled`,
    `attr/<name>/oracle` (`attr_weak/...` for a continuous trait whose oracle R² < WEAK_ORACLE_R2).

    generated / real: [-1, 1] faces [N,3,S,S] with the identity name of each row.
    resamples: bootstrap resamples of the interval (0 = no interval).
    skipped: receives `attr/<name>` -> reason for a continuous attribute that is constant over the
    evaluated identities (R² is undefined there).
    `attr/<name>/group` (with train_names, when every identity has the `group_by` traits): the score of the
    train mode / mean of the speaker's (sex, nationality) group, read off the labels (no probe): what a model
    that heard exactly sex and accent, and learned each group's odds from the train speakers alone, could reach
    with a perfect probe. It is not a ceiling: a few train speakers per group estimate the odds poorly, and the
    corpus' own odds do better (experiments.voice_bound, row voice_mode; docs/voice_bound.md).
    """
    _, gen_pred = probe.predict(generated)
    _, real_pred = probe.predict(real)
    groups, out = identity_groups(generated_names), {}
    for name, kind in codec.kinds.items():
        gen_y = codec.encode(name, [attributes[n][name] for n in generated_names])
        real_y = codec.encode(name, [attributes[n][name] for n in real_names])
        if kind == "continuous" and (gen_y.min() == gen_y.max() or real_y.min() == real_y.max()):
            if skipped is not None:
                skipped[f"attr/{name}"] = "constant over the evaluated identities: R² is undefined"
            continue
        if kind == "categorical":
            chance_pred = torch.full_like(gen_y, codec.majority[name])
        else:
            chance_pred = torch.zeros_like(gen_y)  # the train mean, in standardised units
        oracle = trait_score(kind, real_pred[name], real_y)
        key = f"attr_weak/{name}" if kind == "continuous" and oracle < WEAK_ORACLE_R2 else f"attr/{name}"
        out.update(scored(key, kind, gen_pred[name], gen_y, chance_pred, generated_names, groups, resamples))
        out[f"{key}/oracle"] = oracle
        if train_names and all(k in attributes[n] for n in [*train_names, *generated_names] for k in group_by):
            reference = codec.encode(name, [attributes[n][name] for n in train_names])
            bound = group_bound(kind, gen_y, generated_names, reference, train_names, attributes, group_by)
            out[f"{key}/group"] = trait_score(kind, bound, gen_y)
    return out
