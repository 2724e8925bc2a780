"""Speech for the embedded corpus: eSpeak NG (from the `espeakng-loader` wheel) driven through ctypes.

eSpeak keeps synthesis state in static variables that survive between utterances (and even
espeak_Terminate/espeak_Initialize), so the same call gives different samples depending on what was
spoken before. Each utterance is therefore synthesised in a forked child that starts from the same
pristine state and returns its samples through a pipe: output is bitwise reproducible whatever worker
or order produced it.
"""

from __future__ import annotations

import ctypes
import os
import traceback
from functools import lru_cache

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # eSpeak NG's native output rate
# espeak_PARAMETER values and flags from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4

# Written for this corpus; 9-13 words each, so that every rate gives 2-8 s with the silences.
SENTENCES = (
    "The kettle on the stove began to whistle just as the phone rang.",
    "We walked along the river until the lights of the town came on.",
    "Please leave the spare key under the blue flower pot by the door.",
    "My grandmother kept a notebook of every storm she had ever seen.",
    "The train to the coast leaves twice an hour on weekdays.",
    "He painted the fence green because the shop had run out of white.",
    "A small dog followed us all the way home from the market.",
    "The library closes early on Fridays during the summer months.",
    "She forgot her umbrella and arrived at the meeting soaking wet.",
    "Our neighbours grow tomatoes, beans and far too many courgettes.",
    "The old bridge was repaired last spring after the long flood.",
    "I would rather take the stairs than wait for that slow lift.",
    "They counted the stars until the clouds rolled in from the west.",
    "The recipe asks for two eggs, a cup of flour and some patience.",
    "Nobody noticed that the clock in the hall had stopped at noon.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Bring a warm jacket because the evenings are cold up in the hills.",
    "The bakery on the corner sells the best bread in the city.",
    "He read the letter twice before he folded it into his pocket.",
    "Fresh snow covered the garden and the footprints of a curious fox.",
    "The children built a raft from barrels and planks of driftwood.",
    "Turn left at the church and the museum is on your right.",
    "The coffee was too hot, so I let it cool by the window.",
    "Every morning the fisherman checks the weather before he sets out.",
    "Her bicycle has a basket, a bell and one very squeaky wheel.",
    "We lost the map, but the stars were enough to guide us.",
    "The garden party was moved indoors when the thunder started.",
    "A quiet voice is sometimes easier to hear than a loud one.",
    "The workshop smelled of sawdust, glue and fresh varnish.",
    "Remember to water the plants while I am away next week.",
    "The museum has a whale skeleton hanging from the ceiling.",
    "My brother learned to juggle with three oranges and a lemon.",
    "The market square fills with music every Saturday afternoon.",
    "Sunlight through the leaves made patterns on the kitchen floor.",
    "The ferry was late because of the fog over the harbour.",
    "She keeps her favourite books on the shelf above the desk.",
    "We finally fixed the leaking roof before the autumn rains.",
    "The mountain path is steep, narrow and beautiful at dawn.",
    "The teacher drew a map of the island on the blackboard.",
    "Soup tastes better on a rainy day, or so my father says.",
)


@lru_cache(maxsize=1)
def _espeak():
    """Load libespeak-ng (the wheel's copy) and declare the few functions used."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]  # seeds the breath noise of some variants
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return lib, espeakng_loader.get_data_path().encode()


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _synthesise_in_child(voice: str, text: str, rate: int, pitch: int, pitch_range: int, write_fd: int) -> None:
    """Runs in the forked child: synthesise and write raw int16 samples to `write_fd`."""
    lib, data_path = _espeak()
    chunks: list[bytes] = []

    def collect(wav, n, _events):
        if n > 0:
            chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    callback = _SynthCallback(collect)
    if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0) != ESPEAK_RATE:
        raise RuntimeError("espeak_Initialize failed or changed its sample rate")
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"eSpeak has no voice {voice!r}")
    for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
        lib.espeak_SetParameter(param, value, 0)
    lib.espeak_ng_SetRandSeed(1)
    encoded = text.encode()
    if lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
        raise RuntimeError(f"espeak_Synth failed on {text!r}")
    lib.espeak_Synchronize()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(b"".join(chunks))


def espeak_synth(voice: str, text: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
    """int16 samples at 22.05 kHz of `text` spoken by eSpeak `voice` (e.g. "en-us+f3").

    rate: words per minute; pitch, pitch_range: eSpeak's 0-100 scales (50 = the variant's default).
    """
    _espeak()  # load before forking, so that every child shares the loaded library
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then exit without ever returning into the caller's code
        try:
            os.close(read_fd)
            _synthesise_in_child(voice, text, rate, pitch, pitch_range, write_fd)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0 or not raw:
        raise RuntimeError(f"eSpeak synthesis failed for voice {voice!r}, text {text!r}")
    return np.frombuffer(raw, dtype=np.int16)


def make_utterance(traits: dict, rng: np.random.Generator, min_s: float = 2.0, max_s: float = 8.0) -> np.ndarray:
    """One utterance of an identity: float32 at 16 kHz in [-1, 1], `min_s`..`max_s` long.

    Per utterance: a sentence, jitter of pitch (±4), range (±8) and rate (±6 %), 0.25-1.0 s of silence
    before and after, gain, and a noise floor 25-40 dB under the speech so a VAD has something to reject.
    """
    voice = f"{traits['language']}+{traits['voice_variant']}"
    pitch = int(round(np.clip(traits["pitch"] + rng.uniform(-4, 4), 0, 100)))
    pitch_range = int(round(np.clip(traits["pitch_range"] + rng.uniform(-8, 8), 0, 100)))
    rate = int(round(traits["rate_wpm"] * rng.uniform(0.94, 1.06)))
    lead, trail = rng.uniform(0.25, 1.0, size=2)
    order = rng.permutation(len(SENTENCES))
    for index in order:
        text = SENTENCES[index]
        expected_s = len(text.split()) * 60 / rate  # cheap screen before synthesising
        if not min_s - 0.5 < expected_s + lead + trail < max_s - 0.5:
            continue
        speech = resample_poly(espeak_synth(voice, text, rate, pitch, pitch_range) / 32768.0, SAMPLE_RATE, ESPEAK_RATE)
        total_s = lead + trail + len(speech) / SAMPLE_RATE
        if min_s <= total_s <= max_s:
            break
    else:  # no sentence fits this rate and voice: take the first and cut or pad its trailing silence to fit
        speech = resample_poly(
            espeak_synth(voice, SENTENCES[order[0]], rate, pitch, pitch_range) / 32768.0, SAMPLE_RATE, ESPEAK_RATE
        )[: int((max_s - lead - 0.25) * SAMPLE_RATE)]
        trail = float(
            np.clip(trail, min_s - lead - len(speech) / SAMPLE_RATE, max_s - lead - len(speech) / SAMPLE_RATE)
        )
    speech *= 10 ** (rng.uniform(-24, -16) / 20) / np.sqrt(np.mean(speech**2))  # speech RMS -24..-16 dBFS
    wav = np.concatenate([np.zeros(int(lead * SAMPLE_RATE)), speech, np.zeros(int(trail * SAMPLE_RATE))])
    noise_rms = np.sqrt(np.mean(speech**2)) * 10 ** (-rng.uniform(25, 40) / 20)
    wav += noise_rms * rng.standard_normal(len(wav))
    return np.clip(wav, -1.0, 1.0).astype(np.float32)
