"""Is there speech in a file a user hands `generate`? Asked of silero-vad, a neural voice-activity detector whose
model ships in its wheel: webrtcvad, which trims the training audio, passes noise as speech (Debian's alsa-utils
`Noise.wav` kept 1.40 of its 1.41 s, 3 s of pink noise all of it), and a face would be drawn for it. Training data is
not checked here: the corpus is speech by construction, and its figures stay as they were measured."""

import warnings

import torch

from datamodules.audio import AudioError

SAMPLE_RATE = 16000  # silero-vad's rate (load_audio resamples to it)


class SpeechCheck:
    def __init__(
        self,
        threshold: float = 0.5,  # silero's speech probability above which a 32 ms window is speech
        min_speech_ms: int = 250,  # silero's shortest speech segment; shorter ones are noise
    ):
        from silero_vad import load_silero_vad  # imported here: only generate needs it

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice, for the wheel's own model file
            warnings.simplefilter("ignore", FutureWarning)
            self.model = load_silero_vad()
        self.threshold, self.min_speech_ms = threshold, min_speech_ms

    @torch.no_grad()
    def speech_seconds(self, path, wav: torch.Tensor) -> float:
        """Seconds of speech in `wav` (float32 mono [T] at 16 kHz, read from `path`); AudioError naming `path`
        where there is none."""
        from silero_vad import get_speech_timestamps

        segments = get_speech_timestamps(
            wav,
            self.model,
            threshold=self.threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=self.min_speech_ms,
        )
        self.model.reset_states()
        seconds = sum(s["end"] - s["start"] for s in segments) / SAMPLE_RATE
        if seconds == 0:
            raise AudioError(
                path,
                f"no speech found (silero-vad: no {self.min_speech_ms} ms of speech at threshold {self.threshold})",
            )
        return seconds
