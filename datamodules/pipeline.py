"""A voice file -> the model's input: the one definition that prepare, both item paths and generate share.

    stored(path)        load -> 16 kHz mono -> VAD -> features -> float16: what a prepared shard holds
    model_input(feats)  stored features -> float32, short clips tiled to `eval_min_frames` (Wen's test rule)
    pipeline(path)      model_input(stored(path)): a held-out clip exactly as evaluation feeds it

Built from the data hyper-parameters a checkpoint stores (`VoicePipeline.of(hparams)`), so inference cannot drift
from training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.audio import AudioFeatures, AudioFrontEnd, tile_to_min

WEN_PREEMPHASIS = 0.97  # the log-mel pre-emphasis before it became the paper's 0.95


def stored_features(features: dict | None) -> dict:
    """The AudioFeatures kwargs a checkpoint was trained with. Its datamodule stores the pre-emphasis since that
    default moved from Wen et al.'s 0.97 to the paper's 0.95 (VoxVGGDataModule); a log-mel config without one was
    written before, so it meant 0.97."""
    features = dict(features or {"kind": "logmel"})
    if features.get("kind", "logmel") == "logmel" and "preemphasis" not in features:
        features["preemphasis"] = WEN_PREEMPHASIS
    return features


def checkpoint_data_hparams(state: dict, where) -> dict:
    """The datamodule hyper-parameters a training checkpoint (read as data) stores, as Lightning keeps them, with
    its features read as they were trained (`stored_features`)."""
    hparams = state.get("datamodule_hyper_parameters") if isinstance(state, dict) else None
    if hparams is None:
        raise ValueError(
            f"{where}: no datamodule hyper-parameters in this checkpoint, so its training-time "
            "data and audio features are unknown (train through experiments.run)"
        )
    return {**dict(hparams), "features": stored_features(hparams.get("features"))}


class VoicePipeline:
    def __init__(
        self,
        features: dict | None = None,  # AudioFeatures kwargs, e.g. {kind: logmel}
        vad: dict | None = None,  # AudioFrontEnd VAD kwargs
        eval_min_frames: int = 1000,  # shorter held-out clips are tiled up to this
    ):
        self.features, self.vad = dict(features or {"kind": "logmel"}), dict(vad or {})
        self.eval_min_frames = eval_min_frames
        self.front = AudioFrontEnd(AudioFeatures(**self.features), **self.vad)

    DATA_ARGS = ("features", "vad", "eval_min_frames")  # the datamodule hyper-parameters it is built from

    @classmethod
    def of(cls, hparams: dict) -> VoicePipeline:
        """The pipeline of a datamodule's hyper-parameters (as stored in a checkpoint; `DATA_ARGS` of them)."""
        return cls(stored_features(hparams.get("features")), hparams.get("vad"), hparams.get("eval_min_frames", 1000))

    @property
    def n_features(self) -> int:
        return self.front.n_features

    def stored(self, path) -> Tensor:
        """float16 [F, T]: the features a shard stores (AudioError when the file is unreadable or too short)."""
        return self.front(path).to(torch.float16)

    def model_input(self, feats: Tensor) -> Tensor:
        """float32 [F, max(T, eval_min_frames)] of stored features [F, T]."""
        return tile_to_min(feats, self.eval_min_frames).float()

    def __call__(self, path) -> Tensor:
        return self.model_input(self.stored(path))
