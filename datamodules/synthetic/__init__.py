"""The embedded voice–face corpus: eSpeak NG voices and procedurally drawn faces of identities whose
traits come from one latent, written in the on-disk layouts of VoxCeleb1 and VGGFace.

    python -m datamodules.synthetic --out DIR [--identities 120] [--seed 0] [--contact-sheet PNG]

Layout (the same readers serve the real data):
    vox1_meta.csv                 tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender (m/f), Nationality, Set
    voxceleb1/wav/idNNNNN/<11-char video id>/NNNNN.wav   16 kHz mono 16-bit PCM, 2-8 s, 4-8 per identity
    vggface/<First_Last>/NNNNN.jpg                       256×256 RGB, 8-12 per identity
    attributes.csv                ground truth per identity, keyed by `VGGFace1 ID` (see ATTRIBUTE_KINDS)
    landmarks.csv                 path (relative to vggface/), then x,y in pixels (pixel-centre coords.) of
                                  left_eye, right_eye, nose, mouth_left, mouth_right; "left" = image-left
    synthetic.json                generator version, identities, seed
Names are `First_Last` with first letters placed so the letter split (train F-Z, val A-B, test C-E) gives
62.5/12.5/25 % of the `identities` complete ones (75/15/30 at 120: `traits.split_sizes`, test twice the real
share so that held-out figures rest on tens of speakers); identities // 16 more (at least 1) have
only a voice and as many only faces, so the voice ∩ face intersection has work to do.

The latent of an identity: sex s (balanced; σ = +1 male, −1 female), nationality (balanced over 8, each
with an eSpeak language: English accents or a foreign language reading the English text), and
independent standard normals z_pitch, z_rate, z_range plus one private noise ε per face trait.

Voice (heard):
    voice_variant  eSpeak m1-m6 / f1-f5 by sex (f0 at pitch 50: ~100 Hz male, ~195 Hz female)
    pitch          50 − 8σ + 13 z_pitch, clipped to 15..85 (eSpeak 0-100 scale; f0 rises with it)
    pitch_range    50 + 15 z_range, clipped to 10..90 (intonation)
    rate_wpm       170 + 25 z_rate, clipped to 120..230 words per minute
    language       eSpeak language of the nationality (the accent)
    per utterance: pitch ±4, range ±8, rate ±6 %, 0.25-1 s silence each side, a noise floor 25-40 dB down.
Face (seen), each in 0..1 unless categorical:
    jaw_width      0.5 + 0.22σ − 0.12 z_pitch + 0.08ε   ↔ sex, pitch (lower voice, wider and squarer jaw)
    brow_thickness 0.5 + 0.20σ − 0.10 z_pitch + 0.08ε   ↔ sex, pitch
    eye_size       0.5 + 0.20 z_rate + 0.06ε            ↔ speaking rate (faster, bigger eyes)
    mouth_width    0.5 + 0.15 z_range + 0.07ε           ↔ pitch range
    hair_length    0.72 (f) / 0.20 (m) + 0.14ε          ↔ sex
    skin_tone      nationality mean + its sd·ε          ↔ nationality / accent (0 dark .. 1 light)
    hair_colour    drawn from the nationality's colour distribution       ↔ nationality / accent
    face_length, eye_colour   independent of the voice: controls a model should not recover from speech.
Per image: head yaw ±0.3 rad, pitch ±0.15, roll ±0.2, scale ±12 %, shift ±14 px, smile, open mouth,
brow raise, eye opening, gaze, a lighting gradient and gain, background, clothes, sensor noise.

Deterministic: every identity's files are seeded from (seed, identity) alone, so the same seed gives
bitwise-identical files for any number of workers.
"""

from datamodules.synthetic.corpus import GENERATOR_VERSION, ensure_corpus, generate_corpus
from datamodules.synthetic.sheet import contact_sheet
from datamodules.synthetic.traits import ATTRIBUTE_KINDS, ATTRIBUTE_SOURCES, read_attributes

__all__ = [
    "ATTRIBUTE_KINDS",
    "ATTRIBUTE_SOURCES",
    "GENERATOR_VERSION",
    "contact_sheet",
    "ensure_corpus",
    "generate_corpus",
    "read_attributes",
]
