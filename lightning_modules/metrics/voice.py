"""What the voice embedding carries of each trait (the embedded corpus): the encoder's share of an attribute score.

A ridge regression, fitted on the train split's utterances (their embeddings, the model's own encoder) to their
speakers' traits, is applied to the evaluated split's utterances and scored as `attr/` is (accuracy or R² per
utterance, the interval over identities, chance and shuffled). Continuous traits are regressed in the codec's
standardised units; a categorical trait is regressed one-hot and read by its largest output.

`voice_attr/<name>` far above `attr/<name>`: the embedding carries the trait and the generator does not draw it.
Both near shuffled: the encoder does not carry it (as read linearly; the generator's head is not linear, so this
is a diagnosis, not a bound). The train utterances are read by the train loader (its random crops), once, under a
fixed seed and with the process' random state put back afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.metrics.attributes import identity_groups, scored
from lightning_modules.metrics.probe import AttributeCodec


@torch.no_grad()
def train_voices(model, datamodule, seed: int) -> tuple[Tensor, Tensor]:
    """([N, embed_dim] embeddings, [N] labels) of one pass over the train loader, drawn under `seed`."""
    was_training = model.training
    model.eval()
    embs, labels = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in datamodule.train_dataloader():
            audio, lengths = batch["audio"].to(model.device), batch["audio_lengths"].to(model.device)
            embs.append(model.embed(audio, lengths).float().cpu())
            labels.append(batch["label"].cpu())
    model.train(was_training)
    return torch.cat(embs), torch.cat(labels)


def ridge_solve(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """x [N, D] -> y [N, K] by least squares with penalty λ|W|², λ = ridge · the mean eigenvalue of the centred
    xᵀx (scale-free: the embeddings are not normalised); float64. Returns (weight [D, K], bias [K]):
    y ≈ x @ weight + bias."""
    assert x.ndim == 2 and y.ndim == 2 and len(x) == len(y), (list(x.shape), list(y.shape))
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc
    gram = gram + ridge * gram.trace() / len(gram) * torch.eye(len(gram), dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


def ridge_fit(x: Tensor, y: Tensor, ridge: float):
    """The predictor of ridge_solve (float64)."""
    weight, bias = ridge_solve(x, y, ridge)
    return lambda z: z.double() @ weight + bias


def voice_scores(
    codec: AttributeCodec,
    train: tuple[Tensor, list[str]],  # train utterances' embeddings and speaker names
    evaluated: tuple[Tensor, list[str]],  # the evaluated split's
    attributes: dict[str, dict],
    ridge: float,
    resamples: int,
) -> dict[str, float]:
    """`voice_attr/<name>` with `/ci95`, `/chance` and `/shuffled` for every trait of the codec."""
    (x_train, train_names), (x, names) = train, evaluated
    groups, out = identity_groups(names), {}
    for name, kind in codec.kinds.items():
        y_train = codec.encode(name, [attributes[n][name] for n in train_names])
        y = codec.encode(name, [attributes[n][name] for n in names])
        if kind == "categorical":  # a class the codec never saw (-1) cannot be a one-hot target: left out of the fit
            known = y_train >= 0
            onehot = torch.nn.functional.one_hot(y_train[known], len(codec.vocab[name]))
            pred = ridge_fit(x_train[known], onehot, ridge)(x).argmax(1)
            chance = torch.full_like(y, codec.majority[name])
        else:
            if y.min() == y.max():
                continue  # R² is undefined; attr/ notes the skip
            pred = ridge_fit(x_train, y_train[:, None], ridge)(x)[:, 0].float()
            chance = torch.zeros_like(y)
        out.update(scored(f"voice_attr/{name}", kind, pred, y, chance, names, groups, resamples))
    return out
