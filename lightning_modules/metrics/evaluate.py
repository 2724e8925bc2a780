"""`evaluate(model, datamodule, cfg, split)`: every metric that can run here, and why the others cannot.

cfg is the `metrics` config group (experiments/conf/metrics/default.yaml). One face is generated per
held-out utterance (EMA generator, constant noise); the real faces are `datamodule.faces(split)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from datamodules.faces import normalize
from lightning_modules.metrics.attributes import attribute_scores
from lightning_modules.metrics.fid import FID, fingerprint, quantize
from lightning_modules.metrics.identity import (
    DlibEmbedder,
    FaceNetEmbedder,
    centroids,
    identity_cosine,
    retrieval_hits,
    shuffled_recall,
)
from lightning_modules.metrics.intervals import bootstrap_ci
from lightning_modules.metrics.ppl import LPIPSDistance, pair_latents, path_length
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.protocols import PROTOCOLS, gallery_blocks, one_per_identity, sf2f_scores, wen_matches
from lightning_modules.metrics.quality import QUALITY_NOTE, probe_quality, speaker_mean_faces
from lightning_modules.metrics.weights import MetricUnavailable, say_once

LABELS = {  # display names in the summary; other keys are shown as they are
    "fid": "FID",
    "ppl_wend": "Path length in W (ppl2_wend)",
    "ppl_zend": "Path length in Z (ppl_zend)",
    "id_cosine": "Identity cosine",
}


def as_dict(cfg: Mapping | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def balanced_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Sorted indices of about `n` samples with the same number from every identity (n // identities each, at
    least one; all of an identity that has fewer), drawn with `seed`: a budget spread over the speakers rather
    than the first n of a name-sorted loader."""
    ids = torch.unique(labels)
    per = max(1, n // len(ids))
    g = torch.Generator().manual_seed(seed)
    picks = []
    for i in ids:
        members = torch.nonzero(labels == i).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per]])
    return torch.cat(picks).sort().values


@torch.no_grad()
def embed_split(model, datamodule, split: str = "test", max_utterances: int | None = None, seed: int = 0):
    """The voice embedding of every utterance of `split` ([N, embed_dim] float on CPU) and identity labels [N];
    with `max_utterances`, a subset balanced over identities (`balanced_subset`, drawn with `seed`)."""
    if split not in ("val", "test"):
        raise ValueError(f"evaluate: split must be 'val' or 'test', got {split!r}")
    loader = getattr(datamodule, f"{split}_dataloader")
    was_training = model.training
    model.eval()
    embs, labels = [], []
    for batch in loader():
        embs.append(model.embed(batch["audio"].to(model.device), batch["audio_lengths"].to(model.device)).float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    if not embs:
        raise ValueError(f"evaluate: the {split} loader yielded no batches")
    embs, labels = torch.cat(embs), torch.cat(labels)
    if max_utterances is not None and max_utterances < len(labels):
        keep = balanced_subset(labels, max_utterances, seed)
        embs, labels = embs[keep], labels[keep]
    return embs, labels


@torch.no_grad()
def generate_split(model, datamodule, split: str = "test", max_utterances: int | None = None, embedded=None):
    """One generated face per utterance of `split` (EMA generator, constant noise): ([-1, 1] float [N,3,S,S] on
    CPU, identity labels [N]). embedded: the split's (embeddings, labels) from embed_split, if already made."""
    emb, labels = embedded if embedded is not None else embed_split(model, datamodule, split, max_utterances)
    was_training = model.training
    model.eval()
    size = getattr(datamodule, "eval_batch_size", 16)
    imgs = [model.generate_from(e.to(model.device), noise_mode="const").float().cpu() for e in emb.split(size)]
    model.train(was_training)
    return torch.cat(imgs), labels


def real_faces(datamodule, split: str) -> tuple[Tensor, Tensor, list[str]]:
    """All real faces of `split` as uint8 [M,3,S,S], their identity labels (index in identities(split))."""
    names = list(datamodule.identities(split))
    faces = datamodule.faces(split)
    missing = [n for n in names if n not in faces]
    if missing:
        raise ValueError(f"evaluate: no real faces for {split} identities {missing[:5]}")
    stack = torch.cat([faces[n] for n in names])
    labels = torch.cat([torch.full((len(faces[n]),), i) for i, n in enumerate(names)])
    return stack, labels, names


def batches(x: Tensor, size: int) -> Iterator[Tensor]:
    yield from x.split(size)


def _module(spec):
    """A metric network given in the config: None, an nn.Module, or a `_target_` dict to instantiate."""
    if spec is None or isinstance(spec, torch.nn.Module):
        return spec
    return hydra.utils.instantiate(spec)


def build_fid(cfg: dict, device, cache_dir) -> FID:
    """FID of the config (Inception unless `feature` names another net); may raise MetricUnavailable."""
    feature = _module(cfg.get("feature"))
    return FID(feature, cfg.get("weights_path"), cfg.get("download", False), cache_dir).to(device)


FID_FLOOR = 2000  # generated faces below which FID (biased upward at small n) comes with a warning


def fid_metric(fid: FID, fake_u8: Tensor, real_u8: Tensor, split: str, batch_size: int = 64) -> dict[str, float]:
    """`fid` and `kid` (NVlabs fid50k_full / kid50k semantics on these sets) with their sample counts
    (`fid/n_gen`, `fid/n_real`, `kid/n_gen`, `kid/n_real`)."""
    fid.set_real(lambda: batches(real_u8, batch_size), key=f"{split}-{fingerprint(real_u8)}")
    counts = {"n_gen": len(fake_u8), "n_real": len(real_u8)}
    out = {"fid": fid.compute(batches(fake_u8, batch_size)), "kid": fid.kid()}
    return out | {f"{m}/{k}": v for m in ("fid", "kid") for k, v in counts.items()}


def fid_note(n_gen: int) -> str | None:
    """The warning that goes beside an FID of fewer than FID_FLOOR generated faces, else None."""
    if n_gen >= FID_FLOOR:
        return None
    return (
        f"FID from {n_gen} generated faces (< {FID_FLOOR}): biased upward at this size and not comparable with "
        "FIDs of other sample sizes (the paper's 50k included); KID is unbiased"
    )


def build_distance(cfg: dict) -> torch.nn.Module:
    """The path-length image distance: LPIPS-VGG16 unless `distance` names another network."""
    return _module(cfg.get("distance")) or LPIPSDistance(cfg.get("vgg_path"), cfg.get("download", False))


PPL_KEYS = {"w": "ppl_wend", "z": "ppl_zend"}  # metrics.ppl.spaces -> result key


def check_ppl_space(G, space: str) -> None:
    """MetricUnavailable where G has no such latent space: W needs a mapping network (DCGAN has none)."""
    if space == "w" and not hasattr(G, "mapping"):
        raise MetricUnavailable("path length in W needs a StyleGAN generator (.mapping); this one has none")


def ppl_metric(model, cfg: dict, space: str, distance: torch.nn.Module | None = None, voices: Tensor | None = None):
    """Endpoint path length of the EMA generator in `space` (w: ppl2_wend, z: ppl_zend); `distance` None builds
    the configured one. Latents: pairs of held-out voices (`voices`, the split's embeddings) when
    cfg["latents"] is `voices`, else N(0, I)."""
    G = model.G_ema
    check_ppl_space(G, space)
    latents = None
    if cfg.get("latents", "voices") == "voices":
        if voices is None:
            raise ValueError("ppl_metric: metrics.ppl.latents=voices needs the held-out voice embeddings")
        latents = pair_latents(voices.to(model.device), model.hparams.get("noise_z_dim", 0))
    distance = build_distance(cfg) if distance is None else distance
    return path_length(
        G,
        distance.to(model.device),
        cfg.get("num_samples", 50_000),
        cfg.get("batch_size", 32),
        cfg.get("epsilon", 1e-4),
        latents=latents,
        seed=cfg.get("seed", 0),
        space=space,
    )


def ppl_note(cfg: dict, split: str, num_voices: int) -> str:
    """How the path lengths were measured, for the report's header."""
    latents = (
        f"pairs of different {split} utterances' voice embeddings (of {num_voices})"
        if cfg.get("latents", "voices") == "voices"
        else "N(0, I)"
    )
    distance = cfg.get("distance")
    if isinstance(distance, Mapping):
        distance = distance.get("_target_")
    distance = "LPIPS-VGG16" if distance is None else distance if isinstance(distance, str) else type(distance).__name__
    return (
        f"endpoints (t = 0), eps {cfg.get('epsilon', 1e-4):g}, {cfg.get('num_samples', 50_000)} samples, "
        f"1st-99th percentile mean; latents: {latents}; distance: {distance}"
    )


def evaluate(
    model, datamodule, cfg: Mapping | DictConfig | None = None, split: str = "test", probe=None
) -> dict[str, Any]:
    """Metrics of `model` on `split`; `_skipped`: missing metric -> reason; `_notes`: caveats.
    probe: a (probe, codec, which) triple from `probe_for` to reuse (None: chosen here when a metric needs it)."""
    cfg = as_dict(cfg)
    download = cfg.get("download", False)
    sub = {k: {"download": download, **as_dict(cfg.get(k))} for k in ("fid", "ppl", "identity", "probe", "quality")}
    resamples = as_dict(cfg.get("intervals")).get("resamples", 1000)
    result: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}

    def skip(name: str, reason: str) -> None:
        skipped[name] = reason
        say_once(f"{name} skipped: {reason}")

    voices, gen_labels = embed_split(model, datamodule, split, cfg.get("max_utterances"))
    gen, _ = generate_split(model, datamodule, split, embedded=(voices, gen_labels))
    real_u8, real_labels, names = real_faces(datamodule, split)
    result["num_generated"], result["num_real"] = len(gen), len(real_u8)
    if len(names) < 2 and resamples:
        notes["intervals"] = f"the {split} split holds {len(names)} identity: no interval over identities (NaN)"
    if hasattr(model, "cur_nimg"):
        result["kimg"] = model.cur_nimg / 1000  # the training budget behind these figures

    if sub["fid"].get("enabled", True):
        try:
            fid = build_fid(sub["fid"], model.device, cfg.get("cache_dir"))
            result.update(fid_metric(fid, quantize(gen), real_u8, split, sub["fid"].get("batch_size", 64)))
            warning = fid_note(len(gen))
            if warning:
                notes["fid"] = warning
                say_once(f"warning: {warning}")
        except MetricUnavailable as err:
            skip("fid", str(err))
    if sub["ppl"].get("enabled", True):
        distance = None
        for space in sub["ppl"].get("spaces", ["z", "w"]):
            try:
                check_ppl_space(model.G_ema, space)
                distance = build_distance(sub["ppl"]) if distance is None else distance
                result[PPL_KEYS[space]] = ppl_metric(model, sub["ppl"], space, distance, voices)
            except MetricUnavailable as err:
                skip(PPL_KEYS[space], str(err))
        if any(PPL_KEYS[space] in result for space in PPL_KEYS):  # the note describes figures that exist
            notes["ppl"] = ppl_note(sub["ppl"], split, len(voices))

    attributes = getattr(datamodule, "attributes", None)
    id_cfg = sub["identity"]
    probe, codec, which = probe if probe is not None else (None, None, None)
    embedder = id_cfg.get("embedder", "auto")
    if embedder == "auto":  # real data: FaceNet where its weights are, else dlib where it is installed
        embedder = "probe" if attributes is not None else "auto"
    wants_attributes = attributes is not None and cfg.get("attributes", {}).get("enabled", True)
    if probe is None and (embedder == "probe" or wants_attributes or sub["quality"].get("enabled", True)):
        probe, codec, which = probe_for(datamodule, sub["probe"])
    if probe is not None:
        result["_probe"] = which  # the instrument behind fd_probe, the attribute scores and probe retrieval

    if probe is not None and sub["quality"].get("enabled", True):
        real_float = normalize(real_u8)
        gen_float = normalize(quantize(gen))  # generated faces quantised as the real ones are stored
        real_feats = probe.predict(real_float)[0]
        protocol = (real_labels, sub["quality"].get("repeats", 10), sub["quality"].get("seed", 0))
        result.update(probe_quality(probe.predict(gen_float)[0], real_feats, *protocol))
        mean_faces = speaker_mean_faces(real_float, real_labels, gen_labels)
        oracle = probe_quality(probe.predict(mean_faces)[0], real_feats, *protocol)
        result["fd_probe/speaker_mean"], result["kid_probe/speaker_mean"] = oracle["fd_probe"], oracle["kid_probe"]
        notes["fd_probe"] = QUALITY_NOTE

    if id_cfg.get("enabled", True):
        try:
            if embedder == "probe":
                embed = lambda x: probe.predict(x)[0]  # noqa: E731
            else:
                embedder, embed = face_embedder(embedder, id_cfg.get("weights_path"), download, model.device)
            protocols = check_protocols(id_cfg.get("protocol", "ours"))
            gen_emb, real_emb = embed(gen), embed(normalize(real_u8))
            if "ours" in protocols:
                result.update(
                    identity_metrics(gen_emb, gen_labels, real_emb, real_labels, len(names), id_cfg, notes, resamples)
                )
            if "sf2f" in protocols:
                sf2f_cfg = as_dict(id_cfg.get("sf2f"))
                if sf2f_cfg.get("generation", "utterance") == "average":
                    query_labels = torch.unique(gen_labels)
                    faces = generate_split(model, datamodule, split, embedded=mean_voices(voices, gen_labels))[0]
                    query = embed(faces)
                else:  # one face per speaker, from one of its utterances (drawn with the identity seed)
                    pick = one_per_identity(gen_labels, id_cfg.get("seed", 0))
                    query, query_labels = gen_emb[pick], gen_labels[pick]
                centers = centroids(real_emb, real_labels, len(names))
                result.update(sf2f_metrics(query, query_labels, centers, sf2f_cfg, notes, resamples))
            if "wen" in protocols:
                info = datamodule.speaker_info() if hasattr(datamodule, "speaker_info") else {}
                sexes = [info.get(n, {}).get("sex", "") for n in names]
                wen_cfg = as_dict(id_cfg.get("wen"))
                result.update(wen_metrics(gen_emb, gen_labels, real_emb, real_labels, sexes, wen_cfg, notes, resamples))
            notes["identity_embedder"] = embedder
        except MetricUnavailable as err:
            skip("identity", str(err))

    if attributes is None:
        skipped["attributes"] = "the dataset has no attributes (only the embedded corpus has)"
    elif cfg.get("attributes", {}).get("enabled", True):
        result.update(
            attribute_scores(
                probe,
                codec,
                gen,
                [names[i] for i in gen_labels],
                normalize(real_u8),
                [names[i] for i in real_labels],
                attributes,
                skipped,
                resamples,
                train_names=list(datamodule.identities("train")),
                group_by=tuple(cfg.get("attributes", {}).get("group_by", ("sex", "nationality"))),
            )
        )
    result["_skipped"], result["_notes"] = skipped, notes
    return result


def identity_metrics(
    gen_emb, gen_labels, real_emb, real_labels, num_ids, cfg: dict, notes: dict, resamples: int = 1000
) -> dict:
    """id_cosine, and per gallery size actually used g (the configured sizes clamped to the identities there
    are, plus always the whole set): `recall@k_g<g>` with its `/ci95` over identities, `/shuffled` (queries'
    identities permuted) and `/chance` (k / g)."""
    centers = centroids(real_emb, real_labels, num_ids)
    out = {"id_cosine": identity_cosine(gen_emb, gen_labels, centers)}
    ks = tuple(cfg.get("ks", (1, 5, 10)))
    repeats, seed = cfg.get("repeats", 10), cfg.get("seed", 0)
    sizes = sorted({min(size, num_ids) for size in cfg.get("galleries", (10, 100))} | {num_ids})
    for size in cfg.get("galleries", (10, 100)):
        if size > num_ids:
            notes[f"recall_g{size}"] = (
                f"gallery of {size} asked for, but the split has {num_ids} identities: reported as _g{num_ids}"
            )
    for g in sizes:
        kept = tuple(k for k in ks if k < g)  # recall@k >= g is 1 by construction
        hits, _ = retrieval_hits(gen_emb, gen_labels, centers, g, kept, repeats, seed)
        shuffled = shuffled_recall(gen_emb, gen_labels, centers, g, kept, repeats, seed=seed)
        for k in kept:
            key = f"recall@{k}_g{g}"
            out[key] = float(hits[k].mean())
            if resamples > 0:
                out[f"{key}/ci95"] = bootstrap_ci(lambda i, h=hits[k]: float(h[i].mean()), gen_labels, resamples)
            out[f"{key}/shuffled"] = shuffled[k]
            out[f"{key}/chance"] = k / g
    return out


def mean_voices(voices: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(the mean voice embedding of each identity [I, D], its identity [I]): SF2F's average-voice generation."""
    ids = torch.unique(labels)
    return torch.stack([voices[labels == i].mean(0) for i in ids]), ids


def face_embedder(name: str, weights_path, download: bool, device):
    """(the embedder used, faces -> embeddings on the CPU) for `facenet`, `dlib` or `auto` (FaceNet, else dlib);
    MetricUnavailable naming what is missing for each."""
    if name not in ("auto", "facenet", "dlib"):
        raise ValueError(f"metrics.identity.embedder must be auto, facenet, dlib or probe, got {name!r}")
    reasons = []
    if name in ("auto", "facenet"):
        try:
            net = FaceNetEmbedder(weights_path, download).to(device)
            return "facenet", lambda x: torch.cat([net(b.to(device)).cpu() for b in x.split(64)])
        except MetricUnavailable as err:
            reasons.append(str(err))
    if name in ("auto", "dlib"):
        try:
            dlib_net = DlibEmbedder()
            return "dlib", lambda x: torch.cat([dlib_net(b) for b in x.split(64)])
        except MetricUnavailable as err:
            reasons.append(str(err))
    raise MetricUnavailable("; ".join(reasons))


def check_protocols(protocol) -> list[str]:
    """metrics.identity.protocol: one name or a list of ours | sf2f | wen."""
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"metrics.identity.protocol must be one or more of {list(PROTOCOLS)}, got {protocol!r}")
    return protocols


def sf2f_metrics(query, query_labels, centers, cfg: dict, notes: dict, resamples: int = 1000) -> dict:
    """The SF2F table's figures (`lightning_modules.metrics.protocols`): `sf2f/cosine`, `sf2f/L1`, `sf2f/L2` (mean
    over identities) and `sf2f/recall@k` in the fixed gallery blocks, each with its `/ci95` over identities;
    recall's `/chance` is k / block. `sf2f/block` and `sf2f/blocks` say which galleries were used."""
    block, ks = cfg.get("block", 100), tuple(cfg.get("ks", (1, 2, 5, 10, 20, 50)))
    scores, pair_labels, size = sf2f_scores(query, query_labels, centers, block, ks)
    num_ids = centers.shape[0]
    out = {"sf2f/block": size, "sf2f/blocks": len(gallery_blocks(num_ids, block)), "sf2f/n": len(query)}
    for name, values in scores.items():
        key, groups = f"sf2f/{name}", pair_labels if name.startswith("recall") else query_labels
        out[key] = float(values.mean())
        if resamples > 0:
            out[f"{key}/ci95"] = bootstrap_ci(lambda i, v=values: float(v[i].mean()), groups, resamples)
        if name.startswith("recall"):
            out[f"{key}/chance"] = int(name.split("@")[1]) / size
    dropped = [k for k in ks if k >= size]
    notes["sf2f"] = (
        f"{len(query)} identities, one face each ({cfg.get('generation', 'utterance')}), ranked in "
        f"{out['sf2f/blocks']} fixed block(s) of {size} sorted identities"
        + (f" (asked for {block}; the split has {num_ids})" if size < block else "")
        + (f"; recall@{dropped} left out (k >= block)" if dropped else "")
    )
    return out


def wen_metrics(gen_emb, gen_labels, real_emb, real_labels, sexes, cfg: dict, notes: dict, resamples: int = 1000):
    """Wen et al.'s 1:2 matching accuracy of every generated face, `wen/match`, and with impostors of the
    speaker's sex, `wen/match_sex` (where every identity's sex is known), each with `/ci95` over identities and
    `/chance` 0.5."""
    repeats, seed = cfg.get("repeats", 10), cfg.get("seed", 0)
    out = {}
    variants = {"wen/match": None}
    if all(sexes):
        variants["wen/match_sex"] = sexes
    else:
        notes["wen/match_sex"] = "not computed: the sex of some identities is unknown"
    for key, by_sex in variants.items():
        wins = wen_matches(gen_emb, gen_labels, real_emb, real_labels, by_sex, repeats, seed)
        kept = ~torch.isnan(wins)  # faces whose speaker has an impostor (of the same sex)
        if not kept.any():
            notes[key] = "not computed: no speaker has an impostor" + (" of the same sex" if by_sex else "")
            continue
        if not kept.all():
            notes[key] = f"{int((~kept).sum())} faces left out: their speaker has no impostor of the same sex"
        out[key] = float(wins[kept].mean())
        if resamples > 0:
            out[f"{key}/ci95"] = bootstrap_ci(lambda i, w=wins[kept]: float(w[i].mean()), gen_labels[kept], resamples)
        out[f"{key}/chance"] = 0.5
    notes["wen"] = f"{len(gen_emb)} generated faces, {repeats} impostor draws each (seed {seed}); ties lose"
    return out


def sf2f_markdown(result: dict) -> str:
    """The SF2F paper's table layout: cosine, L1, L2 to the mean real embedding, then R@k in fixed galleries."""
    recalls = sorted((int(k.split("@")[1]), k) for k in result if k.startswith("sf2f/recall@") and "/" not in k[12:])
    head = ["cosine ↑", "L1 ↓", "L2 ↓", *[f"R@{k} ↑" for k, _ in recalls]]
    values = [result[f"sf2f/{m}"] for m in ("cosine", "L1", "L2")] + [result[key] for _, key in recalls]
    chance = ["", "", ""] + [f"{result[f'{key}/chance']:.3f}" for _, key in recalls]
    lines = [
        f"SF2F protocol: {result['sf2f/n']} identities, {result['sf2f/blocks']} gallery block(s) of "
        f"{result['sf2f/block']}",
        "",
        "| | " + " | ".join(head) + " |",
        "|" + " --- |" * (len(head) + 1),
        "| this model | " + " | ".join(f"{v:.3f}" for v in values) + " |",
        "| chance | " + " | ".join(chance) + " |",
    ]
    return "\n".join(lines) + "\n"


MAIN_TRAITS = ("sex", "nationality", "skin_tone", "hair_colour", "hair_length")  # the headline's traits


def headline_markdown(result: dict, kinds: dict[str, str] | None = None) -> str:
    """The few numbers that say how far the faces are: fd_probe against its real-vs-real floor, the main
    traits against shuffled, oracle and the sex+accent bound with their 95 % intervals, recall@1 in the whole
    gallery against chance. Weak traits (attr_weak/) are left out. kinds: attribute -> categorical | continuous."""
    lines = ["| figure | value | 95 % CI | shuffled | chance | oracle / floor | sex+accent bound |", "|" + " --- |" * 7]

    def row(label, key, ref):
        if key not in result:
            return
        ci = result.get(f"{key}/ci95")
        refs = [
            f"{result[f'{key}/{k}']:.3f}" if f"{key}/{k}" in result else ""
            for k in ("shuffled", "chance", ref, "group")
        ]
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        lines.append("| " + " | ".join([label, f"{result[key]:.3f}", ci_text, *refs]) + " |")

    for key in ("fd_probe", "kid_probe"):
        if key in result:
            floor = result[f"{key}/real"]
            ratio = f" (×{result[key] / floor:.1f})" if floor > 0 else ""
            lines.append(
                f"| {key} (n={result.get('fd_probe/n')}; not Inception) | {result[key]:.4g} | | | | "
                f"{floor:.4g}{ratio} | |"
            )
        if f"{key}/speaker_mean" in result:  # the optimum of a face-on-voice regression, beside the floor
            mean = result[f"{key}/speaker_mean"]
            ratio = f" (×{mean / floor:.1f})" if floor > 0 else ""
            lines.append(f"| {key} of each speaker's mean real face | {mean:.4g} | | | | {floor:.4g}{ratio} | |")
    for trait in MAIN_TRAITS:
        score = {"categorical": "accuracy", "continuous": "R²"}.get((kinds or {}).get(trait), "score")
        row(f"{trait} ({score})", f"attr/{trait}", "oracle")
    galleries = [int(k.rsplit("_g", 1)[1]) for k in result if k.startswith("recall@1_g") and "/" not in k]
    if galleries:
        row(f"recall@1, all {max(galleries)} identities", f"recall@1_g{max(galleries)}", "oracle")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.3g}, {value[1]:.3g}]"
    return str(value)


def summary_markdown(result: dict, title: str) -> str:
    lines = [f"# {title}", ""]
    if "sf2f/cosine" in result:
        lines += [sf2f_markdown(result)]
    lines += ["| metric | value |", "| --- | --- |"]
    for key, value in result.items():
        if not key.startswith("_"):
            lines.append(f"| {LABELS.get(key, key)} | {_fmt(value)} |")
    if result.get("_probe"):
        lines += ["", f"Face probe (fd_probe, attributes, probe retrieval): {result['_probe']}"]
    if result.get("_skipped"):
        lines += ["", "Not computed:", ""] + [f"- **{k}**: {v}" for k, v in result["_skipped"].items()]
    if result.get("_notes"):
        lines += ["", "Notes:", ""] + [f"- {k}: {v}" for k, v in result["_notes"].items()]
    return "\n".join(lines) + "\n"
