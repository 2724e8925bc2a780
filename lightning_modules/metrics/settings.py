"""The `metrics` settings as frozen dataclasses without defaults: experiments/conf/metrics/default.yaml holds every
value, once. `MetricsSettings.of(cfg)` refuses a key that is missing or unknown by its dotted name, where a partial
dict would otherwise fall back on a second, silent copy of the defaults in the code."""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from lightning_modules.metrics.split import as_dict


class Section:
    """A settings section built from its config mapping, strictly."""

    @classmethod
    def of(cls, cfg, where: str = "metrics"):
        cfg = as_dict(cfg)
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in cfg], [k for k in cfg if k not in names]
        if missing or unknown:
            problems = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown)
            raise ValueError(
                f"{where}: {'; '.join(problems)} (experiments/conf/metrics/default.yaml has every key; compose it "
                "and override what differs)"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{n: hints[n].of(cfg[n], f"{where}.{n}") if is_dataclass(hints[n]) else cfg[n] for n in names})


@dataclass(frozen=True)
class FIDSettings(Section):
    enabled: bool
    weights_path: str | None  # torch-fidelity's Inception weights
    feature: Any  # None: Inception pool3; an nn.Module, or a {_target_: ...} of one
    batch_size: int


@dataclass(frozen=True)
class PPLSettings(Section):
    enabled: bool
    spaces: list  # of z | w
    latents: str  # voices | normal
    vgg_path: str | None
    distance: Any  # None: LPIPS-VGG16; an nn.Module (img0, img1) -> [N], or a {_target_: ...} of one
    num_samples: int
    batch_size: int
    epsilon: float
    seed: int


@dataclass(frozen=True)
class SF2FSettings(Section):
    block: int
    ks: list
    generation: str  # utterance | average


@dataclass(frozen=True)
class WenSettings(Section):
    repeats: int
    seed: int


@dataclass(frozen=True)
class IdentitySettings(Section):
    enabled: bool
    embedder: str  # auto | facenet | dlib | probe
    weights_path: str | None
    galleries: list
    ks: list
    repeats: int
    seed: int
    protocol: Any  # a name or a list of ours | sf2f | wen
    sf2f: SF2FSettings
    wen: WenSettings


@dataclass(frozen=True)
class AttributesSettings(Section):
    enabled: bool
    group_by: list


@dataclass(frozen=True)
class VoiceSettings(Section):
    enabled: bool
    ridge: float  # penalty relative to the mean eigenvalue of the train embeddings' XᵀX
    seed: int  # the train loader's crops and order


@dataclass(frozen=True)
class IntervalsSettings(Section):
    resamples: int


@dataclass(frozen=True)
class QualitySettings(Section):
    enabled: bool
    repeats: int
    seed: int


@dataclass(frozen=True)
class ProbeSettings(Section):
    weights: str  # auto | shipped | retrain | a probe file
    steps: int  # the rest: how a retrained probe is trained
    batch_size: int
    lr: float
    width: int
    seed: int


@dataclass(frozen=True)
class CallbackSettings(Section):
    every_kimg: float
    split: str
    max_utterances: int | None
    table_rows: int
    ppl_num_samples: int
    probe_metrics: bool


@dataclass(frozen=True)
class MetricsSettings(Section):
    download: bool
    cache_dir: str | None
    max_utterances: int | None
    fid: FIDSettings
    ppl: PPLSettings
    identity: IdentitySettings
    attributes: AttributesSettings
    voice: VoiceSettings
    intervals: IntervalsSettings
    quality: QualitySettings
    probe: ProbeSettings
    callback: CallbackSettings
