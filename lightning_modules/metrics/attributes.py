"""Attribute recovery on the embedded corpus: can a probe trained on real faces read an identity's traits
(attributes.csv) off the faces generated from that identity's held-out voices?

Per attribute four numbers: the score on generated faces; chance (always predicting the train majority
class / the train mean); shuffled (the same generated predictions scored against the traits of randomly
permuted identities: what a generator that ignores the voice would get, faces that all look alike included);
and the oracle (the same probe on the real faces of the same identities). A model hears a trait when its score
beats `shuffled`.
Categorical -> accuracy; continuous -> R² (1 − SS_res / SS_tot around the evaluated targets' mean).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.metrics.probe import AttributeCodec, FaceProbe


def r2_score(pred: Tensor, target: Tensor) -> float:
    target = target.double()
    ss_tot = (target - target.mean()).square().sum()
    if ss_tot == 0:
        raise ValueError("R² is undefined: all evaluated targets are equal")
    return float(1 - (target - pred.double()).square().sum() / ss_tot)


def _score(kind: str, pred: Tensor, target: Tensor) -> float:
    return float((pred == target).double().mean()) if kind == "categorical" else r2_score(pred, target)


def shuffled_score(kind: str, pred: Tensor, target: Tensor, names: list[str], repeats: int = 200) -> float:
    """Mean score of `pred` against targets whose identities were randomly permuted (seeded, so repeatable)."""
    ids = sorted(set(names))
    index = torch.tensor([ids.index(n) for n in names])
    per_id = torch.stack([target[index == i][0] for i in range(len(ids))])
    g = torch.Generator().manual_seed(0)
    scores = [_score(kind, pred, per_id[torch.randperm(len(ids), generator=g)][index]) for _ in range(repeats)]
    return float(sum(scores) / len(scores))


def attribute_scores(
    probe: FaceProbe,
    codec: AttributeCodec,
    generated: Tensor,
    generated_names: list[str],
    real: Tensor,
    real_names: list[str],
    attributes: dict[str, dict],
    skipped: dict[str, str] | None = None,
) -> dict[str, float]:
    """Scores keyed `attr/<name>`, `attr/<name>/chance`, `attr/<name>/shuffled`, `attr/<name>/oracle`.

    generated / real: [-1, 1] faces [N,3,S,S] with the identity name of each row.
    skipped: receives `attr/<name>` -> reason for a continuous attribute that is constant over the
    evaluated identities (R² is undefined there).
    """
    _, gen_pred = probe.predict(generated)
    _, real_pred = probe.predict(real)
    out = {}
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
        out[f"attr/{name}"] = _score(kind, gen_pred[name], gen_y)
        out[f"attr/{name}/chance"] = _score(kind, chance_pred, gen_y)
        out[f"attr/{name}/shuffled"] = shuffled_score(kind, gen_pred[name], gen_y, generated_names)
        out[f"attr/{name}/oracle"] = _score(kind, real_pred[name], real_y)
    return out
