"""`evaluate(model, datamodule, settings, split)`: every metric family that can run here, and why the others cannot.

The settings are the `metrics` config group (experiments/conf/metrics/default.yaml, as `MetricsSettings`). One face
is generated per held-out utterance (EMA generator, constant noise); the real faces are `datamodule.faces(split)`.
The families are `FAMILIES` (lightning_modules/metrics/families.py), run in that order on one `Split`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lightning_modules.metrics.families import (
    attribute_family,
    fid_family,
    identity_family,
    ppl_family,
    quality_family,
    voice_family,
)
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.settings import MetricsSettings
from lightning_modules.metrics.split import embed_split, generate_split, real_faces
from lightning_modules.metrics.weights import MetricUnavailable, say_once


@dataclass
class Split:
    """What every metric family reads: the evaluated split's voices, generated and real faces, the settings, and
    where caveats and skipped metrics are noted. `probe` is chosen on first use (probe_for)."""

    model: Any
    datamodule: Any
    name: str  # val | test
    settings: MetricsSettings
    voices: Tensor  # [N, embed_dim] voice embeddings of the split's utterances
    gen_labels: Tensor  # [N] their identities
    gen: Tensor  # [N, 3, S, S] one generated face per utterance, [-1, 1]
    real_u8: Tensor  # [M, 3, S, S] the split's real faces
    real_labels: Tensor  # [M]
    names: list[str]  # identity names, by label
    probe_choice: tuple | None = None  # (probe, codec, which), or None to choose on first use
    notes: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    @property
    def download(self) -> bool:
        return self.settings.download

    @property
    def resamples(self) -> int:
        """Bootstrap resamples of the intervals (0: none)."""
        return self.settings.intervals.resamples

    @property
    def attributes(self):
        return getattr(self.datamodule, "attributes", None)

    @property
    def embedder(self) -> str:
        """The identity metrics' face embedder; auto: the probe on the embedded corpus, else FaceNet or dlib."""
        name = self.settings.identity.embedder
        return "probe" if name == "auto" and self.attributes is not None else name

    @property
    def probe(self) -> tuple:
        if self.probe_choice is None:
            self.probe_choice = probe_for(self.datamodule, self.settings.probe)
        return self.probe_choice

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        say_once(f"{name} skipped: {reason}")


def _enabled(section: str):
    return lambda s: getattr(s.settings, section).enabled


# name -> (whether it runs on this split, the family); in this order. A family that raises MetricUnavailable is
# skipped under its name, with the reason.
FAMILIES = {
    "fid": (_enabled("fid"), fid_family),
    "ppl": (_enabled("ppl"), ppl_family),
    "quality": (_enabled("quality"), quality_family),
    "identity": (_enabled("identity"), identity_family),
    "attributes": (lambda s: s.attributes is not None and _enabled("attributes")(s), attribute_family),
    "voice": (lambda s: s.attributes is not None and _enabled("voice")(s), voice_family),
}


def evaluate(model, datamodule, settings, split: str = "test", probe=None) -> dict[str, Any]:
    """Metrics of `model` on `split` (settings: a MetricsSettings, or the whole metrics config to build one).
    `_skipped`: missing metric -> reason; `_notes`: caveats; `_probe`: the face probe behind fd_probe, the attribute
    scores and probe retrieval. probe: a (probe, codec, which) triple from `probe_for` to reuse (None: chosen here
    when a family needs it)."""
    if not isinstance(settings, MetricsSettings):
        settings = MetricsSettings.of(settings)
    voices, gen_labels = embed_split(model, datamodule, split, settings.max_utterances)
    gen, _ = generate_split(model, datamodule, split, embedded=(voices, gen_labels))
    real_u8, real_labels, names = real_faces(datamodule, split)
    s = Split(model, datamodule, split, settings, voices, gen_labels, gen, real_u8, real_labels, names, probe)
    result: dict[str, Any] = {"num_generated": len(gen), "num_real": len(real_u8)}
    if len(names) < 2 and s.resamples:
        s.notes["intervals"] = f"the {split} split holds {len(names)} identity: no interval over identities (NaN)"
    if hasattr(model, "cur_nimg"):
        result["kimg"] = model.cur_nimg / 1000  # the training budget behind these figures
    if s.attributes is None:
        s.skipped["attributes"] = "the dataset has no attributes (only the embedded corpus has)"
    for name, (runs, family) in FAMILIES.items():
        if not runs(s):
            continue
        try:
            result.update(family(s))
        except MetricUnavailable as err:
            s.skip(name, str(err))
    if s.probe_choice is not None:
        result["_probe"] = s.probe_choice[2]
    result["_skipped"], result["_notes"] = s.skipped, s.notes
    return result
