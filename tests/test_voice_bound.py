"""Twins of the embedded corpus' speakers (datamodules.synthetic.traits.twin), their photos, and the command that
scores them as the evaluation scores a model (experiments.voice_bound)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.synthetic.traits import PITCH, read_attributes, sample_identities, twin

VOICE = ("sex", "nationality", "language", "voice_variant", "pitch", "pitch_range", "rate_wpm")
PEOPLE = sample_identities(120, seed=0)


def _voice_part(t: dict) -> dict:
    """The parts of the face traits the voice fixes (package docstring): z_pitch, z_rate, z_range read back."""
    sign = 1.0 if t["sex"] == "m" else -1.0
    z0, z1, z2 = (t["pitch"] - 50 + 8 * sign) / 13, (t["rate_wpm"] - 170) / 25, (t["pitch_range"] - 50) / 15
    return {
        "jaw_width": 0.5 + 0.22 * sign - 0.12 * z0,
        "brow_thickness": 0.5 + 0.2 * sign - 0.1 * z0,
        "eye_size": 0.5 + 0.2 * z1,
        "mouth_width": 0.5 + 0.15 * z2,
    }


def test_a_voice_twin_shares_what_the_voice_carries_and_redraws_the_rest():
    rng = np.random.default_rng(0)
    for person in PEOPLE[:40]:
        t = person.traits
        for _ in range(3):
            other = twin(t, "voice", rng)
            assert {k: other[k] for k in VOICE} == pytest.approx({k: t[k] for k in VOICE}, abs=1e-9)
    # the face traits: the voice's part kept, the private noise drawn anew with its documented sd
    person = next(p.traits for p in PEOPLE if 20 < p.traits["pitch"] < 80 and 0.3 < p.traits["jaw_width"] < 0.7)
    twins = [twin(person, "voice", rng) for _ in range(3000)]
    for trait, sd in (("jaw_width", 0.08), ("mouth_width", 0.07), ("face_length", 0.18)):
        values = np.array([t[trait] for t in twins])
        assert values.std() == pytest.approx(sd, rel=0.1), trait
        if trait in _voice_part(person):
            assert values.mean() == pytest.approx(_voice_part(person)[trait], abs=0.01), trait
    assert len({t["hair_colour"] for t in twins}) > 1 and len({t["eye_colour"] for t in twins}) == 5


def test_a_twin_reads_the_voice_from_attributes_csv(tmp_path):
    """The command reads traits from attributes.csv (four decimals): the twin still hears the same voice."""
    from datamodules.synthetic.traits import write_attributes

    write_attributes(tmp_path / "attributes.csv", PEOPLE[:20])
    rng = np.random.default_rng(1)
    for name, t in read_attributes(tmp_path / "attributes.csv").items():
        other = twin(t, "voice", rng)
        assert {k: other[k] for k in VOICE} == pytest.approx({k: t[k] for k in VOICE}, abs=1e-3), name


def test_a_clipped_pitch_gives_a_twin_from_beyond_the_clip():
    """At a clip bound the voice says only that z_pitch lies beyond it: twins draw it from that tail."""
    t = dict(PEOPLE[0].traits, sex="m", pitch=PITCH[0])
    rng = np.random.default_rng(2)
    twins = [twin(t, "voice", rng) for _ in range(300)]
    assert all(o["pitch"] == PITCH[0] for o in twins)
    jaw_z = (np.array([o["jaw_width"] for o in twins]) - 0.72) / -0.12  # jaw 0.5 + 0.22 - 0.12 z_pitch + noise
    assert np.median(jaw_z) < -2.0  # z_pitch <= (15 - 42) / 13 = -2.08, blurred by the private noise


def test_what_other_twins_share():
    rng = np.random.default_rng(3)
    t = PEOPLE[5].traits
    assert twin(t, "speaker", rng) == t
    same_group = [twin(t, "sex_accent", rng) for _ in range(200)]
    assert all((o["sex"], o["nationality"]) == (t["sex"], t["nationality"]) for o in same_group)
    assert np.std([o["pitch"] for o in same_group]) > 5  # the pitch is no longer the speaker's
    anyone = [twin(t, "nothing", rng) for _ in range(2000)]
    assert np.mean([o["sex"] == "m" for o in anyone]) == pytest.approx(0.5, abs=0.04)
    assert len({o["nationality"] for o in anyone}) == 8
    with pytest.raises(ValueError, match="keep='face'"):
        twin(t, "face", rng)


@pytest.mark.integration
def test_the_bound_scores_twins_in_the_evaluations_crop(tmp_path):
    """End to end on a small corpus, the real config composed: the speakers' own new photos score closer to the real
    faces, and are retrieved more often, than people of the population. (That the photos are drawn in the crop the
    evaluation reads is test_face_prior.py::test_face_set_crops_are_the_corpus_crops.)"""
    from conftest import compose_command

    from experiments.voice_bound import run

    cfg = compose_command(
        "voice_bound",
        [
            "data.corpus.identities=24",
            "data.face_size=32",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"out={tmp_path / 'out'}",
            "draws=2",
            "rows=[speaker,nothing]",
            "threads=1",
        ],
    )
    result = run(cfg)
    speaker, anyone = result["rows"]["speaker"]["mean"], result["rows"]["nothing"]["mean"]
    assert speaker["fd_probe"] < anyone["fd_probe"]
    assert speaker["recall@1_g6"] > anyone["recall@1_g6"]
    written = json.loads((tmp_path / "out" / "voice_bound_test.json").read_text())
    assert written["speakers"] == 6 and len(written["rows"]["speaker"]["draws"]) == 2
    assert (tmp_path / "out" / "voice_bound_test.md").read_text().count("\n| ") == 4  # header, rule and the two rows


def test_spread_tempers_the_redrawn_noise_and_zero_gives_the_posteriors_mode():
    from datamodules.synthetic.traits import ACCENTS

    rng = np.random.default_rng(4)
    t = next(p.traits for p in PEOPLE if p.traits["nationality"] == "UK")
    mode = [twin(t, "voice", rng, spread=0.0) for _ in range(20)]
    assert all(o["hair_colour"] == "brown" == max(ACCENTS["UK"][3], key=ACCENTS["UK"][3].get) for o in mode)
    assert {o["face_length"] for o in mode} == {0.5} and {o["skin_tone"] for o in mode} == {ACCENTS["UK"][1]}
    assert [o["jaw_width"] for o in mode] == pytest.approx([_voice_part(t)["jaw_width"]] * 20)
    half = np.array([twin(t, "voice", rng, spread=0.5)["face_length"] for _ in range(3000)])
    assert half.std() == pytest.approx(0.09, rel=0.1)  # face_length's sd 0.18, halved


def test_voice_wmean_gives_each_utterance_its_speakers_mean_projection():
    """mean_twin_ws: `count` voice twins per speaker, projected in one call, averaged per speaker and handed to
    every utterance of that speaker (labels in any order, speakers with any number of utterances)."""
    import torch

    from experiments.voice_bound import mean_twin_ws

    class Recorder:  # projects photo k to the w filled with k, and keeps what it was given
        def ws(self, photos):
            self.photos = photos
            return torch.arange(len(photos), dtype=torch.float32)[:, None, None].expand(-1, 3, 4).clone()

    names = [f"id{i}" for i in range(4)]
    attributes = {name: PEOPLE[i].traits for i, name in enumerate(names)}
    labels = torch.tensor([2, 0, 2, 3, 0, 2])  # speaker 1 has no utterance
    through = Recorder()
    ws = mean_twin_ws(attributes, names, labels, np.random.default_rng(5), 32, "arcface", through, count=3)
    assert through.photos.shape == (9, 3, 32, 32) and through.photos.dtype == torch.uint8  # speakers 0, 2, 3
    block = {0: 1.0, 2: 4.0, 3: 7.0}  # the mean of the photo indices 3j..3j+2 of the j-th speaker present
    assert ws.shape == (6, 3, 4) and ws[:, 0, 0].tolist() == [block[s] for s in labels.tolist()]


@pytest.mark.integration
def test_through_a_generator_scores_its_drawings_of_the_twins(tmp_path):
    """through=face_prior_64 on a small corpus: the rows' photos are projected into W of the prior and its drawings
    scored. The oracle (the speaker's own photos, projected) is retrieved more often than people of the population
    projected alike, and voice_wmean draws one face per speaker (no spread within a speaker)."""
    from conftest import compose_command

    from experiments.voice_bound import run

    small = ["data.corpus.identities=24", f"paths.cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'out'}"]
    how = ["draws=1", "through=face_prior_64", "project.steps=60", "project.mean_of=2", "threads=2"]
    result = run(compose_command("voice_bound", [*small, *how, "rows=[speaker,nothing,voice_wmean]"]))
    rows = {row: figs["mean"] for row, figs in result["rows"].items()}
    assert rows["speaker"]["recall@1_g6"] > rows["nothing"]["recall@1_g6"]
    assert rows["voice_wmean"]["probe_spread/within"] < 1e-6 < rows["speaker"]["probe_spread/within"]
    written = json.loads((tmp_path / "out" / "voice_bound_test_face_prior_64.json").read_text())
    assert written["through"]["G"] == "face_prior_64" and written["through"]["steps"] == 60
    with pytest.raises(ValueError, match="voice_wmean averages ws"):
        run(compose_command("voice_bound", [*small, "rows=[voice_wmean]"]))
