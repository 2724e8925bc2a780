"""Sample grids of held-out speakers: one speaker per row, their real face and then the faces generated from
`per_speaker` different utterances, so it shows both whether the faces look like faces and whether they stay
that speaker's. Rows are ordered round-robin over (nationality, sex) groups, so both sexes and several accents
appear in the first rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def speaker_order(names: list[str], info: dict[str, dict]) -> list[str]:
    """`names` round-robin over their (nationality, sex) groups (groups and members in sorted order); names
    without info form one group of their own."""
    groups: dict[tuple, list[str]] = {}
    for name in sorted(names):
        meta = info.get(name, {})
        groups.setdefault((meta.get("nationality", ""), meta.get("sex", "")), []).append(name)
    queues = [groups[k] for k in sorted(groups)]
    order = []
    for rank in range(max(map(len, queues), default=0)):
        order += [q[rank] for q in queues if rank < len(q)]
    return order


def collect_speakers(loader, names: list[str], info: dict[str, dict], count: int, per_speaker: int) -> dict | None:
    """Up to `per_speaker` utterances and one real face for each of `count` speakers of a held-out loader
    (batches with audio, audio_lengths, face, label = index into `names`), in `speaker_order`. Speakers with
    fewer utterances repeat their last one. Returns {audio [R·U, F, T], audio_lengths [R·U], face [R, 3, S, S],
    names [R]} or None for an empty loader."""
    clips: dict[int, list[Tensor]] = {}
    faces: dict[int, Tensor] = {}
    for batch in loader:
        for i, label in enumerate(batch["label"].tolist()):
            if len(clips.setdefault(label, [])) < per_speaker:
                clips[label].append(batch["audio"][i, :, : int(batch["audio_lengths"][i])])
                faces.setdefault(label, batch["face"][i])
    if not clips:
        return None
    chosen = speaker_order([names[label] for label in clips], info)[:count]
    labels = [names.index(n) for n in chosen]
    rows = [(clips[lab] + [clips[lab][-1]] * per_speaker)[:per_speaker] for lab in labels]
    audio = [a for row in rows for a in row]
    frames = max(a.shape[1] for a in audio)
    return {
        "audio": torch.stack([F.pad(a, (0, frames - a.shape[1])) for a in audio]),
        "audio_lengths": torch.tensor([a.shape[1] for a in audio]),
        "face": torch.stack([faces[lab] for lab in labels]),
        "names": chosen,
    }


def speaker_grid(real: Tensor, fake: Tensor, pad: int = 2) -> Tensor:
    """[R, 3, S, S] real faces and [R·U, 3, S, S] generated ones -> one image [3, H, W] in [0, 1]: a row per
    speaker (real | U generated), with a wider gap after the real face."""
    rows, per = real.shape[0], fake.shape[0] // real.shape[0]
    assert fake.shape[0] == rows * per and fake.shape[1:] == real.shape[1:], f"{list(real.shape)} vs {list(fake.shape)}"
    size = real.shape[-1]
    tiles = torch.cat([real[:, None], fake.view(rows, per, *fake.shape[1:])], dim=1)  # [R, 1 + U, 3, S, S]
    tiles = ((tiles.float() + 1) / 2).clamp(0, 1)
    height = rows * (size + pad) + pad
    width = (1 + per) * (size + pad) + 2 * pad
    grid = torch.ones(3, height, width)
    for r in range(rows):
        for c in range(1 + per):
            y = pad + r * (size + pad)
            x = pad + c * (size + pad) + (2 * pad if c > 0 else 0)
            grid[:, y : y + size, x : x + size] = tiles[r, c]
    return grid
