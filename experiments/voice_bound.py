"""What a voice can tell of a face on the embedded corpus: the evaluation's figures for ideal voice-to-face models.

    python -m experiments.voice_bound [split=test] [draws=5] [data.corpus.seed=4242]   (make voice-bound)

The corpus draws a speaker's voice and face from one latent (datamodules/synthetic/__init__.py), so ideal models
of the voice alone can be written down: draw the face of a *twin* who shares everything the voice carries and
nothing else (`datamodules.synthetic.traits.twin`), sampled or at the posterior's mode. Here each utterance of the
split gets, in place of a generated face, one photo of a twin of its speaker, rendered and cropped as the corpus'
photos are, and the evaluation's own measures score those faces against the split's real ones: fd_probe beside its
floor, the spread between and within speakers, recall@1 among the split's speakers and the traits read by the face
probe. Rows (`rows`):

- speaker: the speaker's own new photos (every trait kept; the check that these faces meet the floor);
- voice: a new voice twin per utterance (the posterior over faces given the voice: an ideal model with a noise
  input);
- voice_half, voice_mode: voice twins whose redrawn noises are halved, or at their mean with the nationality's most
  likely hair colour (the posterior's mode: what a model that draws the likeliest face scores; sampling is not
  what minimises fd_probe or maximises an accuracy);
- voice_per_speaker: one voice twin per speaker, its photos for all of the speaker's utterances (an ideal model
  that draws one person per voice);
- sex_accent: a twin sharing sex and nationality only, per utterance (what attr/<trait>/group assumes is heard);
- nothing: a person of the corpus' population per utterance (an ideal unconditional prior).

With `through=G` (a generator: a shipped name such as face_prior_64, or a file) the same photos are projected into W
of G, one w for every layer (NVlabs' projector objective, as `experiments.latent_targets` projects the pull's
targets), and G's drawings of those ws are scored instead: what the paper's route can reach *with that G*, whatever
the voice head. The speaker row then is an oracle W head that knows the face, and one row exists only there:

- voice_wmean: per speaker, the mean w of `project.mean_of` voice twins' projected photos, for all of the speaker's
  utterances: the conditional mean E[w | voice] that a head regressing the pull's targets estimates.

Each row is drawn `draws` times; its figures are the mean and sd over the draws (the speakers and utterances are
the split's, fixed). Writes voice_bound_<split>.json and .md in `out` (voice_bound_<split>_<G>.* with `through`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from datamodules.cli_errors import one_line_errors
from datamodules.faces import normalize
from datamodules.files import write_atomic
from datamodules.synthetic.face_set import aligned_photo
from datamodules.synthetic.traits import twin
from experiments.schema import check_command_config, check_values
from lightning_modules.io.legacy import load_generator
from lightning_modules.metrics.attributes import attribute_scores
from lightning_modules.metrics.families import identity_metrics
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.quality import probe_quality, speaker_mean_faces, speaker_spread
from lightning_modules.metrics.settings import MetricsSettings
from lightning_modules.metrics.split import real_faces
from lightning_modules.projector import make_distance, project_each, w_stats

ROWS = {  # row -> (what the twin shares with the speaker, one twin per "utterance" or per "speaker", spread)
    "speaker": ("speaker", "utterance", 1.0),
    "voice": ("voice", "utterance", 1.0),
    "voice_per_speaker": ("voice", "speaker", 1.0),
    "sex_accent": ("sex_accent", "utterance", 1.0),
    "nothing": ("nothing", "utterance", 1.0),
    "voice_half": ("voice", "utterance", 0.5),  # rows are seeded by their place here: new ones go last
    "voice_mode": ("voice", "utterance", 0.0),
    "voice_wmean": ("voice", "speaker_mean", 1.0),  # through a generator only: the mean w of several twins
}
TRAITS = ("sex", "skin_tone", "hair_colour", "hair_length")  # attr/<trait> reported per row


def utterance_labels(datamodule, split: str) -> Tensor:
    """[N] the speaker of each utterance of `split`, in the evaluation's order (one generated face each)."""
    loader = getattr(datamodule, f"{split}_dataloader")()
    return torch.cat([batch["label"] for batch in loader])


def twin_faces(
    attributes: dict,  # name -> traits (datamodule.attributes)
    names: list[str],  # the split's identities, by label
    labels: Tensor,  # [N] speaker of each utterance
    row: str,  # a key of ROWS
    rng: np.random.Generator,
    size: int,  # crop size in pixels
    align: str,  # arcface | ffhq, as the split's real faces
) -> Tensor:
    """uint8 [N, 3, size, size]: for each utterance a photo of a twin of its speaker, as ROWS[row] says."""
    keep, per, spread = ROWS[row]
    assert per in ("utterance", "speaker"), f"{row}: its faces are drawn by a generator (mean_twin_ws)"
    people = {}  # speaker -> the one twin of a per-speaker row
    faces = []
    for label in labels.tolist():
        traits = attributes[names[label]]
        if per == "speaker":
            person = people.setdefault(label, twin(traits, keep, rng, spread))
        else:
            person = twin(traits, keep, rng, spread)
        faces.append(aligned_photo(person, rng, size, align))
    return torch.from_numpy(np.stack(faces))


@dataclass
class Through:
    """A generator the rows' photos are projected into (W, one w for every layer) and drawn by."""

    G: Any  # lightning_modules.nets.stylegan2.Generator, eval mode
    stats: tuple  # (w_avg, w_std) of its mapping, the projector's start and latent-noise scale
    distance: Any  # the projector's image distance
    steps: int  # Adam steps per face
    batch: int  # faces projected at once
    seed: int  # the k-th face of a call draws its projection noise from seed + k

    def ws(self, photos: Tensor) -> Tensor:
        """[N, num_ws, w_dim] the photos' (uint8 [N, 3, S, S]) projections, one w repeated over the layers."""
        how = dict(num_steps=self.steps, batch=self.batch, seed=self.seed, space="w", stats=self.stats)
        return project_each(self.G, normalize(photos), self.distance, **how)

    @torch.no_grad()
    def draw(self, ws: Tensor) -> Tensor:
        """[-1, 1] float faces of ws, constant noise, as the evaluation draws a voice's faces."""
        return torch.cat([self.G.synthesis(w, noise_mode="const").float() for w in ws.split(self.batch)])


def mean_twin_ws(
    attributes: dict,
    names: list[str],
    labels: Tensor,
    rng: np.random.Generator,
    size: int,
    align: str,
    through: Through,
    count: int,  # voice twins per speaker whose projections are averaged
) -> Tensor:
    """[N, num_ws, w_dim] for each utterance its speaker's mean projected w over `count` photos of voice twins."""
    speakers = sorted(set(labels.tolist()))
    photos = [
        aligned_photo(twin(attributes[names[s]], "voice", rng), rng, size, align)
        for s in speakers
        for _ in range(count)
    ]
    ws = through.ws(torch.from_numpy(np.stack(photos)))
    means = ws.double().reshape(len(speakers), count, *ws.shape[1:]).mean(dim=1).float()
    place = {s: i for i, s in enumerate(speakers)}
    return means[torch.tensor([place[s] for s in labels.tolist()])]


@dataclass
class Reference:
    """The split's real faces as the evaluation reads them, and the probe that scores faces against them."""

    names: list[str]  # the split's identities, by label
    real_u8: Tensor  # [M, 3, S, S] their photos
    real_labels: Tensor  # [M]
    real_feats: Tensor  # [M, D] the probe's features of them
    probe: Any  # (FaceProbe, AttributeCodec, which) from probe_for
    attributes: dict  # name -> traits
    train_names: list[str]  # for the sex+accent bound (attr/<trait>/group)


def scores(faces: Tensor, labels: Tensor, ref: Reference, settings: MetricsSettings) -> dict[str, float]:
    """The evaluation's figures of `faces` ([-1, 1] float, one per utterance, speakers `labels`) against the real
    faces."""
    probe, codec, _ = ref.probe
    feats = probe.predict(faces)[0]
    q, recall = settings.quality, f"recall@1_g{len(ref.names)}"
    out = probe_quality(feats, ref.real_feats, ref.real_labels, q.repeats, q.seed)
    out.update(speaker_spread(feats, labels, ref.real_feats, ref.real_labels))
    args = (feats, labels, ref.real_feats, ref.real_labels, len(ref.names), settings.identity, {}, 0)
    out[recall] = identity_metrics(*args)[recall]
    attrs = attribute_scores(
        probe,
        codec,
        faces,
        [ref.names[i] for i in labels],
        normalize(ref.real_u8),
        [ref.names[i] for i in ref.real_labels],
        ref.attributes,
        resamples=0,  # the draws give the spread; the speakers are fixed
        train_names=ref.train_names,
    )
    out.update({k: v for k, v in attrs.items() if k.count("/") == 1 or k.endswith("/group")})
    return out


def row_figures(
    row: str, cfg: DictConfig, ref: Reference, labels: Tensor, through: Through | None, settings: MetricsSettings
) -> dict:
    """{mean, sd, draws}: the figures of cfg.draws draws of `row`'s faces, one per utterance (speakers `labels`)."""
    size, align = ref.real_u8.shape[-1], cfg.data.face_align
    per_draw = []
    for d in range(cfg.draws):  # a row's draws do not depend on which other rows run
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, list(ROWS).index(row), d]))
        if ROWS[row][1] == "speaker_mean":
            ws = mean_twin_ws(ref.attributes, ref.names, labels, rng, size, align, through, cfg.project.mean_of)
            faces = through.draw(ws)
        else:
            photos = twin_faces(ref.attributes, ref.names, labels, row, rng, size, align)
            faces = normalize(photos) if through is None else through.draw(through.ws(photos))
        per_draw.append(scores(faces, labels, ref, settings))
    keys = per_draw[0].keys()
    return {
        "mean": {k: float(np.mean([p[k] for p in per_draw])) for k in keys},
        "sd": {k: float(np.std([p[k] for p in per_draw], ddof=1)) if cfg.draws > 1 else 0.0 for k in keys},
        "draws": per_draw,
    }


def through_of(cfg: DictConfig) -> Through | None:
    """The generator of cfg.through with the projector's settings, or None (the photos are scored as they are)."""
    if cfg.through is None:
        return None
    G = load_generator(cfg.through).eval()
    if G.img_resolution != cfg.data.face_size:
        raise ValueError(
            f"voice_bound: {cfg.through}: a {G.img_resolution} px generator, but data.face_size is "
            f"{cfg.data.face_size}: its faces must be scored at the split's size"
        )
    distance = make_distance(cfg.project.distance, None, None)[0]
    return Through(G, w_stats(G), distance, cfg.project.steps, cfg.project.batch, cfg.project.seed)


def run(cfg: DictConfig) -> dict:
    check_command_config(cfg, "voice_bound")
    check_values(cfg, ["data"])
    averaged = [row for row in cfg.rows if ROWS[row][1] == "speaker_mean"]
    if cfg.through is None and averaged:
        raise ValueError(f"voice_bound: the row {averaged[0]} averages ws: it needs a generator (through=...)")
    torch.set_num_threads(cfg.threads)
    through = through_of(cfg)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    if dm.attributes is None:
        where = cfg.data.get("root") or cfg.data.get("corpus_dir")
        raise ValueError(
            f"voice_bound: {where}: no attributes.csv; twins exist only on the embedded corpus (data=embedded)"
        )
    settings = MetricsSettings.of(cfg.metrics)
    real_u8, real_labels, names = real_faces(dm, cfg.split)
    probe = probe_for(dm, settings.probe)
    real_feats = probe[0].predict(normalize(real_u8))[0]
    ref = Reference(names, real_u8, real_labels, real_feats, probe, dm.attributes, list(dm.identities("train")))
    labels = utterance_labels(dm, cfg.split)
    mean_faces = probe[0].predict(speaker_mean_faces(normalize(real_u8), real_labels, labels))[0]
    q = settings.quality
    result = {
        "split": cfg.split,
        "speakers": len(names),
        "utterances": len(labels),
        "real_faces": len(real_u8),
        "corpus": dict(cfg.data.corpus),
        "probe": probe[2],
        "draws": cfg.draws,
        "speaker_mean": probe_quality(mean_faces, real_feats, real_labels, q.repeats, q.seed),
        "rows": {},
    }
    if through is not None:
        result["through"] = {"G": str(cfg.through), **dict(cfg.project)}
    for row in cfg.rows:
        result["rows"][row] = row_figures(row, cfg, ref, labels, through, settings)
        print(f"{row}: fd_probe {result['rows'][row]['mean']['fd_probe']:.3f}", flush=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = bound_markdown(result)
    stem = f"voice_bound_{cfg.split}" + ("" if through is None else f"_{Path(str(cfg.through)).stem}")
    write_atomic(out / f"{stem}.md", lambda p: p.write_text(markdown))
    write_atomic(out / f"{stem}.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(markdown)
    return result


def bound_markdown(result: dict) -> str:
    """One table: each row's figures, mean ± sd over its draws, fd_probe also as a multiple of its floor."""
    g = f"recall@1_g{result['speakers']}"
    cols = [("fd_probe", "fd_probe"), ("between / within", None), ("recall@1", g)] + [
        (t.replace("_", " "), f"attr/{t}") for t in TRAITS
    ]
    drawn = f"; projected into W of {result['through']['G']} and drawn by it" if "through" in result else ""
    lines = [
        f"Twins of the {result['speakers']} {result['split']} speakers, one photo per utterance{drawn} "
        f"({result['utterances']} utterances, {result['real_faces']} real faces; corpus {result['corpus']}; "
        f"{result['draws']} draws, mean ± sd; probe {result['probe']})",
        "",
        "| row | " + " | ".join(c for c, _ in cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    floor = result["speaker_mean"]["fd_probe/real"]  # real vs real: the same for every row (one face per utterance)
    for row, figs in result["rows"].items():
        m, s = figs["mean"], figs["sd"]
        cells = []
        for _, key in cols:
            if key is None:
                cells.append(f"{m['probe_spread/between']:.2f} / {m['probe_spread/within']:.2f}")
            elif key == "fd_probe":
                cells.append(f"{m[key]:.3f} ± {s[key]:.3f} (×{m[key] / m['fd_probe/real']:.1f})")
            else:
                cells.append(f"{m[key]:.3f} ± {s[key]:.3f}" if key in m else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    mean = result["speaker_mean"]["fd_probe"]
    lines += [
        "",
        f"floor (real vs real, halves of the speakers' photos): {floor:.3f}; each speaker's mean real face: "
        f"{mean:.3f} (×{mean / floor:.1f}); chance recall@1 {1 / result['speakers']:.3f}",
    ]
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="conf", config_name="voice_bound")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
