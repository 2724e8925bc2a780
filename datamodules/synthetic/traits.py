"""Identity latent of the embedded corpus: names, accents and every trait both renderers read.

The relations between voice and face traits are documented in the package docstring
(`datamodules/synthetic/__init__.py`); this file is their single implementation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.files import read_table, refuse_repeats

# Accent table: nationality -> (eSpeak language, skin-tone mean, skin-tone sd, hair-colour probabilities).
# Non-English eSpeak languages read the English sentences with their own letter-to-sound rules: an accent.
ACCENTS: dict[str, tuple[str, float, float, dict[str, float]]] = {
    "USA": (
        "en-us",
        0.62,
        0.16,
        {"black": 0.25, "dark_brown": 0.3, "brown": 0.25, "blonde": 0.15, "red": 0.05},
    ),
    "UK": ("en-gb-x-rp", 0.78, 0.06, {"dark_brown": 0.25, "brown": 0.35, "blonde": 0.25, "red": 0.15}),
    "Jamaica": ("en-029", 0.18, 0.06, {"black": 0.9, "dark_brown": 0.1}),
    "Kenya": ("sw", 0.10, 0.05, {"black": 1.0}),
    "Mexico": ("es-419", 0.46, 0.06, {"black": 0.6, "dark_brown": 0.35, "brown": 0.05}),
    "Germany": ("de", 0.82, 0.05, {"dark_brown": 0.15, "brown": 0.35, "blonde": 0.4, "red": 0.1}),
    "Italy": ("it", 0.62, 0.06, {"black": 0.35, "dark_brown": 0.45, "brown": 0.2}),
    "Sweden": ("sv", 0.88, 0.04, {"brown": 0.25, "blonde": 0.6, "red": 0.15}),
}
# eSpeak voice variants (timbre, base pitch) per sex; f0 at pitch 50 is ~100 Hz (male), ~195 Hz (female).
VARIANTS = {"m": ("m1", "m2", "m3", "m4", "m6"), "f": ("f1", "f2", "f3", "f4", "f5")}
EYE_COLOURS = ("dark", "brown", "blue", "green", "grey")
# Clip bounds of the heard traits (eSpeak's pitch and range scales, words per minute).
PITCH, PITCH_RANGE, RATE = (15.0, 85.0), (10.0, 90.0), (120.0, 230.0)

# Columns of attributes.csv besides the key `VGGFace1 ID`, and what kind of value each holds.
ATTRIBUTE_KINDS: dict[str, str] = {
    "sex": "categorical",
    "nationality": "categorical",
    "language": "categorical",
    "voice_variant": "categorical",
    "pitch": "continuous",
    "pitch_range": "continuous",
    "rate_wpm": "continuous",
    "skin_tone": "continuous",
    "hair_colour": "categorical",
    "hair_length": "continuous",
    "jaw_width": "continuous",
    "brow_thickness": "continuous",
    "eye_size": "continuous",
    "mouth_width": "continuous",
    "face_length": "continuous",
    "eye_colour": "categorical",
}
# Which renderer reads each trait ("both": drawn in the face and heard in the voice).
ATTRIBUTE_SOURCES: dict[str, str] = {
    "sex": "both",
    "nationality": "both",
    "language": "voice",
    "voice_variant": "voice",
    "pitch": "voice",
    "pitch_range": "voice",
    "rate_wpm": "voice",
    "skin_tone": "face",
    "hair_colour": "face",
    "hair_length": "face",
    "jaw_width": "face",
    "brow_thickness": "face",
    "eye_size": "face",
    "mouth_width": "face",
    "face_length": "face",
    "eye_colour": "face",
}

FIRST_NAMES = {
    "f": "Alice Amelia Bella Beatrice Clara Chloe Daisy Diana Elena Emma Fiona Grace Hannah Ines Julia Kira "
    "Laura Maya "
    "Nora Olivia Paula Quinn Rosa Sofia Tara Uma Vera Wendy Xenia Yara Zoe",
    "m": "Aaron Adrian Boris Bruno Carlos Cyril Daniel Dmitri Edward Ethan Felix George Hugo Ivan James Kofi "
    "Liam Marco "
    "Nils Oscar Pablo Quentin Rafael Samuel Tomas Umar Victor Walter Xavier Yusuf Zane",
}
LAST_NAMES = (
    "Abara Brandt Castillo Dufresne Eriksen Fontaine Garcia Haugen Ishikawa Jensen Kamau Lindqvist Moreau "
    "Nakamura Okafor Petrov Quiroga Rossi Schmidt Tanaka Umeh Varga Weber Xu Yilmaz Zeller Ambrose Bianchi "
    "Clarke Delgado Evans Fischer Greene Hoffmann"
).split()
# The real split rule assigns identities by the first letter of their name.
SPLIT_LETTERS = {"train": "FGHIJKLMNOPQRSTUVWXYZ", "val": "AB", "test": "CDE"}


@dataclass
class Identity:
    name: str  # `First_Last`, the VGGFace1 ID
    has_voice: bool
    has_face: bool
    traits: dict  # ATTRIBUTE_KINDS keys -> value
    seed: int  # seeds this identity's utterances and images


def _clip01(x: float) -> float:
    return float(np.clip(x, 0.0, 1.0))


def _names(rng: np.random.Generator, sexes: list[str], buckets: list[str]) -> list[str]:
    """A unique `First_Last` per identity, its first letter drawn from its split bucket's letters."""
    taken: set[str] = set()
    names = []
    for sex, bucket in zip(sexes, buckets):
        firsts = [f for f in FIRST_NAMES[sex].split() if f[0] in SPLIT_LETTERS[bucket]]
        while True:
            name = f"{firsts[rng.integers(len(firsts))]}_{LAST_NAMES[rng.integers(len(LAST_NAMES))]}"
            if name not in taken:
                taken.add(name)
                names.append(name)
                break
    return names


def split_sizes(identities: int) -> dict[str, int]:
    """Complete identities per split: 1/8 validation and 1/4 test (at least one each), the rest train.
    The test share is twice the real data's (15 %) so that a corpus small enough for a CPU still gives
    held-out figures over tens of speakers (24 at the default 96)."""
    if identities < 3:
        raise ValueError(f"identities={identities}: need at least 3 (one per split)")
    val, test = max(1, round(identities / 8)), max(1, round(identities / 4))
    return {"train": identities - val - test, "val": val, "test": test}


def sample_identities(identities: int, seed: int) -> list[Identity]:
    """`identities` complete identities (voice and face) split by initial letter as `split_sizes` says, plus
    max(1, identities // 16) voice-only and as many face-only identities (train letters), so that the
    voice ∩ face intersection has work to do. Sexes and accents are balanced by construction."""
    sizes = split_sizes(identities)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1F]))
    extras = max(1, identities // 16)
    total = identities + 2 * extras
    n_val, n_test = sizes["val"], sizes["test"]
    buckets = ["val"] * n_val + ["test"] * n_test + ["train"] * (total - n_val - n_test)
    modality = [(True, True)] * identities + [(True, False)] * extras + [(False, True)] * extras
    sexes = list(rng.permutation(["m", "f"] * (total // 2) + ["m"] * (total % 2)))
    nationalities = list(rng.permutation((list(ACCENTS) * total)[:total]))
    names = _names(rng, sexes, buckets)
    out = []
    for i in range(total):
        traits = draw_traits(str(sexes[i]), str(nationalities[i]), rng.standard_normal(10), rng)
        has_voice, has_face = modality[i]
        out.append(Identity(names[i], has_voice, has_face, traits, int(rng.integers(2**31))))
    return out


def draw_traits(sex: str, nat: str, z: np.ndarray, rng: np.random.Generator) -> dict:
    """Every trait of one identity (ATTRIBUTE_KINDS) from its latent: `sex`, nationality `nat` and ten standard
    normals `z` (z_pitch, z_rate, z_range, then one private noise per face trait, as the package docstring
    writes them); `rng` draws the voice variant, hair colour and eye colour, in that order."""
    language, skin_mean, skin_sd, hair_probs = ACCENTS[nat]
    sign = 1.0 if sex == "m" else -1.0
    return {
        "sex": sex,
        "nationality": nat,
        "language": language,
        "voice_variant": VARIANTS[sex][rng.integers(len(VARIANTS[sex]))],
        "pitch": float(np.clip(50 - 8 * sign + 13 * z[0], *PITCH)),
        "pitch_range": float(np.clip(50 + 15 * z[2], *PITCH_RANGE)),
        "rate_wpm": float(np.clip(170 + 25 * z[1], *RATE)),
        "skin_tone": _clip01(skin_mean + skin_sd * z[3]),
        "hair_colour": str(rng.choice(list(hair_probs), p=list(hair_probs.values()))),
        "hair_length": _clip01((0.72 if sex == "f" else 0.2) + 0.14 * z[4]),
        "jaw_width": _clip01(0.5 + 0.22 * sign - 0.12 * z[0] + 0.08 * z[5]),
        "brow_thickness": _clip01(0.5 + 0.2 * sign - 0.1 * z[0] + 0.08 * z[6]),
        "eye_size": _clip01(0.5 + 0.2 * z[1] + 0.06 * z[7]),
        "mouth_width": _clip01(0.5 + 0.15 * z[2] + 0.07 * z[8]),
        "face_length": _clip01(0.5 + 0.18 * z[9]),
        "eye_colour": EYE_COLOURS[rng.integers(len(EYE_COLOURS))],
    }


def _heard_normal(value: float, centre: float, scale: float, bounds: tuple[float, float], rng) -> float:
    """The standard normal z behind `value` = clip(centre + scale·z, *bounds): exact inside the bounds; at a
    bound (where clipping hides z) a draw from the normal's tail beyond it, which is what the voice tells."""
    lo, hi = bounds
    if lo < value < hi:
        return (value - centre) / scale
    edge = ((lo if value <= lo else hi) - centre) / scale
    while True:  # rejection from the tail: every clip bound lies within 3 sd, so a few hundred tries at most
        z = rng.standard_normal(256)
        z = z[z <= edge] if value <= lo else z[z >= edge]
        if len(z):
            return float(z[0])


TWIN_KEEPS = ("speaker", "voice", "sex_accent", "nothing")


def twin(traits: dict, keep: str, rng: np.random.Generator, spread: float = 1.0) -> dict:
    """The traits of a new person who shares with `traits` what `keep` names, everything else drawn anew from
    the corpus' own distributions (draw_traits):

    - speaker: everything (new photos of the same person);
    - voice: everything the voice carries: sex, nationality (the accent), voice variant, and z_pitch, z_rate,
      z_range as pitch, rate and range give them back, hence the parts of the jaw, brows, eyes and mouth they
      fix; the face's private noises, hair colour and eye colour are drawn anew. Faces of such twins are what
      an ideal voice-to-face model draws: the posterior over faces given the voice;
    - sex_accent: sex and nationality only (what attr/<trait>/group assumes is heard);
    - nothing: a person of the corpus' population (sex and nationality uniform, as sample_identities balances
      them).

    `spread` scales every normal drawn anew: 1 samples the posterior; 0 gives its mode, the noises at their mean
    and the nationality's most likely hair colour (eye colour, uniform over its five, is still drawn)."""
    if keep not in TWIN_KEEPS:
        raise ValueError(f"twin: keep={keep!r} is not one of {TWIN_KEEPS}")
    if keep == "speaker":
        return dict(traits)
    z = spread * rng.standard_normal(10)
    if keep == "nothing":
        sex, nat = str(rng.choice(["m", "f"])), str(rng.choice(list(ACCENTS)))
    else:
        sex, nat = str(traits["sex"]), str(traits["nationality"])
    if keep == "voice":
        sign = 1.0 if sex == "m" else -1.0
        z[0] = _heard_normal(float(traits["pitch"]), 50 - 8 * sign, 13, PITCH, rng)
        z[1] = _heard_normal(float(traits["rate_wpm"]), 170, 25, RATE, rng)
        z[2] = _heard_normal(float(traits["pitch_range"]), 50, 15, PITCH_RANGE, rng)
    drawn = draw_traits(sex, nat, z, rng)
    if keep == "voice":
        drawn["voice_variant"] = traits["voice_variant"]
    if spread == 0:
        hair_odds = ACCENTS[nat][3]
        drawn["hair_colour"] = max(hair_odds, key=hair_odds.get)
    return drawn


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_attributes(path: Path, identities: list[Identity]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["VGGFace1 ID", *ATTRIBUTE_KINDS])
        for ident in sorted(identities, key=lambda i: i.name):
            w.writerow([ident.name, *(_format(ident.traits[k]) for k in ATTRIBUTE_KINDS)])


def read_attributes(path: str | Path) -> dict[str, dict[str, float | str]]:
    """attributes.csv -> {VGGFace1 ID: {trait: float (continuous) | str (categorical)}}; read as
    `files.read_table` reads, and a name on two lines (the later row would win) is refused with its lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no attributes file (generate the corpus with python -m datamodules.synthetic)"
        )
    _, numbered, columns = read_table(path)
    missing = {"VGGFace1 ID", *ATTRIBUTE_KINDS} - set(columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    refuse_repeats(path, numbered, "VGGFace1 ID", "identity")
    out: dict[str, dict[str, float | str]] = {}
    for line, row in numbered:
        values: dict[str, float | str] = {}
        for key, kind in ATTRIBUTE_KINDS.items():
            if kind == "categorical":
                values[key] = row[key]
                continue
            try:
                values[key] = float(row[key])
            except (TypeError, ValueError):  # TypeError: a short row leaves None
                raise ValueError(f"{path}: line {line}: {key}={row[key]!r} is not a number") from None
        out[row["VGGFace1 ID"]] = values
    return out
