"""The SF2F and Wen identity protocols (lightning_modules/metrics/protocols.py) against values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import metrics_settings
from test_evaluate import StandInData, StandInModel, metrics_cfg

from lightning_modules.metrics import evaluate, summary_markdown
from lightning_modules.metrics.protocols import gallery_blocks, one_per_identity, sf2f_scores, wen_matches


@pytest.mark.parametrize(
    "num_ids, blocks",
    [
        (189, [(0, 100), (89, 189)]),  # the real test split: the last block moved back to be full
        (200, [(0, 100), (100, 200)]),
        (250, [(0, 100), (100, 200), (150, 250)]),
        (30, [(0, 30)]),  # the embedded corpus: one block of every identity
    ],
)
def test_gallery_blocks_are_fixed_full_and_cover_every_identity(num_ids, blocks):
    found = gallery_blocks(num_ids, 100)
    assert [(b.start, b.stop) for b in found] == blocks
    assert set().union(*map(set, found)) == set(range(num_ids))


def orthonormal(n: int) -> torch.Tensor:
    """[n, n] one-hot centers: sums of them give exact, tie-able cosine similarities."""
    return torch.eye(n)


def test_sf2f_ranks_a_face_in_a_gallery_of_100_at_its_known_place():
    """Identity 7's face leans on identities 1-4 more than on its own: it ranks 5th among 100."""
    centers = orthonormal(100)
    face = centers[7] + 2 * centers[1:5].sum(0)
    others = torch.stack([centers[i] for i in range(100) if i != 7])  # the other faces are their own centers
    scores, pairs, size = sf2f_scores(
        torch.cat([face[None], others]), torch.tensor([7] + [i for i in range(100) if i != 7]), centers, 100
    )
    assert (
        size == 100
        and pairs.tolist()[0] == 7
        and set(scores) == {"cosine", "L1", "L2"} | {f"recall@{k}" for k in (1, 2, 5, 10, 20, 50)}
    )
    assert [scores[f"recall@{k}"][0].item() for k in (1, 2, 5, 10)] == [0.0, 0.0, 1.0, 1.0]
    assert scores["recall@1"][1:].eq(1).all()  # a face equal to its center ranks first
    unit = face / face.norm()  # |face| = sqrt(1 + 4·4) = sqrt(17)
    assert scores["cosine"][0].item() == pytest.approx(1 / math.sqrt(17), abs=1e-5)
    assert scores["L1"][0].item() == pytest.approx((unit - centers[7]).abs().sum().item(), abs=1e-4)
    assert scores["L2"][0].item() == pytest.approx(math.sqrt(2 - 2 / math.sqrt(17)), abs=1e-5)


def test_sf2f_counts_ties_against_the_face_and_each_block_on_its_own():
    """189 identities: a face of identity 95 is ranked in both blocks; one equal to two centers ties and misses."""
    centers = orthonormal(189)
    labels = torch.arange(189)
    faces = centers.clone()
    faces[95] = centers[95] + centers[150]  # 150 is in the second block only
    faces[10] = centers[10] + centers[11]  # an exact tie with identity 11
    scores, pairs, size = sf2f_scores(faces, labels, centers, 100, (1, 2))
    assert size == 100 and len(pairs) == 200 and (pairs == 95).sum() == 2
    hits = dict(zip(map(tuple, torch.stack([pairs, torch.arange(200)], 1).tolist()), scores["recall@1"].tolist()))
    first, second = [i for (label, i) in hits if label == 95]
    assert hits[(95, first)] == 1.0 and hits[(95, second)] == 0.0  # 150 outranks it only in the second block
    assert hits[(10, next(i for (label, i) in hits if label == 10))] == 0.0  # a tie counts against it
    assert scores["recall@2"][pairs == 10].item() == 1.0
    with pytest.raises(ValueError, match="one generated face per identity"):
        sf2f_scores(faces[[0, 0]], torch.tensor([0, 0]), centers, 100)


def test_one_face_per_identity_is_drawn_from_its_own_utterances():
    labels = torch.tensor([2, 0, 0, 1, 2, 2, 1])
    picks = one_per_identity(labels, seed=3)
    assert labels[picks].tolist() == [0, 1, 2] and torch.equal(picks, one_per_identity(labels, seed=3))


def test_wen_matching_against_a_known_impostor():
    """Three speakers whose real faces are e0, e1 and e2: speaker 0's face near e0 wins every 1:2 trial, its face
    between e1 and e2 loses every one; with sex-matched impostors the only man has none (NaN)."""
    real = torch.eye(3)[[0, 0, 1, 1, 2]]  # identity 0: two faces at e0, identity 1: at e1, identity 2: at e2
    real_labels = torch.tensor([0, 0, 1, 1, 2])
    queries = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]), dim=1)
    wins = wen_matches(queries, torch.tensor([0, 0, 2]), real, real_labels, repeats=20)
    assert wins.tolist() == [1.0, 0.0, 1.0]
    by_sex = wen_matches(queries, torch.tensor([0, 0, 2]), real, real_labels, sexes=["f", "f", "m"], repeats=5)
    assert by_sex[:2].tolist() == [1.0, 0.0] and math.isnan(by_sex[2])


@pytest.mark.integration
def test_evaluate_with_every_protocol_prints_the_sf2f_table():
    cfg = {**metrics_cfg(), "fid": {"enabled": False}, "ppl": {"enabled": False}, "attributes": {"enabled": False}}
    cfg["identity"].update(protocol=["ours", "sf2f", "wen"], embedder="probe", sf2f={"block": 100})
    data = StandInData()
    data.speaker_info = lambda: {n: {"sex": "f" if i % 2 else "m"} for i, n in enumerate(data.colours)}
    result = evaluate(StandInModel(), data, metrics_settings(**cfg), split="test")
    assert result["sf2f/block"] == 2 and result["sf2f/blocks"] == 1 and result["sf2f/n"] == 2
    assert "sf2f/recall@1" in result and "sf2f/recall@2" not in result  # k >= block is 1 by construction
    assert result["sf2f/recall@1/chance"] == 0.5 and "asked for 100; the split has 2" in result["_notes"]["sf2f"]
    for key in ("sf2f/cosine", "sf2f/L1", "sf2f/L2", "wen/match", "recall@1_g2"):
        assert isinstance(result[key], float), key
    assert result["wen/match/chance"] == 0.5 and "wen/match_sex" not in result  # x0 and x1 differ in sex
    table = summary_markdown(result, "stand-in")
    assert (
        "SF2F protocol: 2 identities, 1 gallery block(s) of 2" in table
        and "| cosine ↑ | L1 ↓ | L2 ↓ | R@1 ↑ |" in table
    )
    cfg["identity"].update(protocol="sf2f", sf2f={"generation": "average"})
    averaged = evaluate(StandInModel(), data, metrics_settings(**cfg), split="test")
    assert "sf2f/cosine" in averaged and "recall@1_g2" not in averaged and "wen/match" not in averaged
