"""Sample grids: speaker order over sexes and accents, several utterances per speaker, the grid layout."""

import torch

from lightning_modules.callbacks.samples import collect_speakers, speaker_grid, speaker_order


def test_speaker_order_shows_both_sexes_and_every_accent_first():
    info = {f"{nat}{sex}{i}": {"sex": sex, "nationality": nat} for nat in "ABC" for sex in "fm" for i in range(3)}
    order = speaker_order(list(info), info)
    assert sorted(order) == sorted(info)
    first = order[:6]  # one of each (nationality, sex) group before any repeats
    assert {(info[n]["nationality"], info[n]["sex"]) for n in first} == {(a, s) for a in "ABC" for s in "fm"}
    assert speaker_order(["b", "a"], {}) == ["a", "b"]  # no info: name order


def test_collect_speakers_takes_several_utterances_per_speaker():
    names = ["x", "y"]
    batches = []
    for start in range(0, 5, 2):  # utterances of x, y, x, y, x with lengths 5..9 and a face per speaker
        labels = torch.tensor([0, 1])[: min(2, 5 - start)]
        lengths = torch.arange(start, start + len(labels)) + 5
        audio = torch.zeros(len(labels), 2, 10)
        for i, n in enumerate(lengths):
            audio[i, :, :n] = float(start + i)
        face = labels[:, None, None, None].float().expand(-1, 3, 4, 4)
        batches.append({"audio": audio, "audio_lengths": lengths, "face": face, "label": labels})
    out = collect_speakers(batches, names, {}, count=2, per_speaker=3)
    assert out["names"] == ["x", "y"]
    assert out["audio_lengths"].tolist() == [5, 7, 9, 6, 8, 8]  # y has two utterances: the last repeats
    assert out["audio"][1, 0, :7].eq(2.0).all() and out["audio"][1, 0, 7:].eq(0).all()
    assert out["face"][:, 0, 0, 0].tolist() == [0.0, 1.0]
    assert collect_speakers([], names, {}, 2, 3) is None


def test_speaker_grid_layout():
    real = torch.full((2, 3, 4, 4), -1.0)
    fake = torch.arange(6.0).view(6, 1, 1, 1).expand(-1, 3, 4, 4) / 10  # tile values 0.5 .. 0.75
    grid = speaker_grid(real, fake)
    assert grid.shape == (3, 2 * 6 + 2, 4 * 6 + 4)
    assert grid[:, 2:6, 2:6].eq(0).all() and grid[:, 2:6, 6:12].eq(1).all()  # real face, then a wider gap
    for row in range(2):
        for col in range(3):
            y, x = 2 + 6 * row, 12 + 6 * col
            assert torch.allclose(grid[:, y : y + 4, x : x + 4], torch.tensor((fake[3 * row + col, 0, 0, 0] + 1) / 2))
