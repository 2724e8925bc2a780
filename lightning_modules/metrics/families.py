"""The metric families `evaluate` runs, each a function of the evaluated split (`evaluate.Split`) that returns its
figures, notes its caveats and raises MetricUnavailable when what it needs is not here; and the helpers each
needs (the metrics callback reuses the FID and path-length ones)."""

from __future__ import annotations

from collections.abc import Mapping

import hydra
import torch
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
from lightning_modules.metrics.protocols import PROTOCOLS, gallery_blocks, one_per_identity, sf2f_scores, wen_matches
from lightning_modules.metrics.quality import QUALITY_NOTE, probe_quality, speaker_mean_faces, speaker_spread
from lightning_modules.metrics.settings import FIDSettings, IdentitySettings, PPLSettings, SF2FSettings, WenSettings
from lightning_modules.metrics.split import batches, generate_split, prior_faces
from lightning_modules.metrics.voice import train_voices, voice_scores
from lightning_modules.metrics.weights import MetricUnavailable, say_once


def fid_family(s) -> dict:
    """Inception FID and KID of the generated faces against the split's real ones."""
    fid = build_fid(s.settings.fid, s.download, s.model.device, s.settings.cache_dir)
    out = fid_metric(fid, quantize(s.gen), s.real_u8, s.name, s.settings.fid.batch_size)
    warning = fid_note(len(s.gen))
    if warning:
        s.notes["fid"] = warning
        say_once(f"warning: {warning}")
    return out


def ppl_family(s) -> dict:
    """Endpoint path length in each configured space; a space the generator lacks is skipped by its key."""
    out, distance, ppl = {}, None, s.settings.ppl
    for space in ppl.spaces:
        try:
            check_ppl_space(s.model.G_ema, space)
            distance = build_distance(ppl, s.download) if distance is None else distance
            out[PPL_KEYS[space]] = ppl_metric(s.model, ppl, space, distance, s.voices)
        except MetricUnavailable as err:
            s.skip(PPL_KEYS[space], str(err))
    if out:  # the note describes figures that exist
        s.notes["ppl"] = ppl_note(ppl, s.name, len(s.voices))
    return out


def quality_family(s) -> dict:
    """fd_probe and kid_probe in the face probe's features, beside their real-vs-real floor, the score of each
    speaker's mean real face and, for a frozen pretrained G, the score of its own unconditional faces."""
    probe = s.probe[0]
    real_float = normalize(s.real_u8)
    gen_float = normalize(quantize(s.gen))  # generated faces quantised as the real ones are stored
    real_feats = probe.predict(real_float)[0]
    protocol = (s.real_labels, s.settings.quality.repeats, s.settings.quality.seed)
    gen_feats = probe.predict(gen_float)[0]
    out = probe_quality(gen_feats, real_feats, *protocol)
    out.update(speaker_spread(gen_feats, s.gen_labels, real_feats, s.real_labels))
    mean_faces = speaker_mean_faces(real_float, s.real_labels, s.gen_labels)
    oracle = probe_quality(probe.predict(mean_faces)[0], real_feats, *protocol)
    out["fd_probe/speaker_mean"], out["kid_probe/speaker_mean"] = oracle["fd_probe"], oracle["kid_probe"]
    prior = prior_faces(s.model, len(s.gen), s.settings.quality.seed)
    if prior is not None:
        scored = probe_quality(probe.predict(normalize(quantize(prior)))[0], real_feats, *protocol)
        out["fd_probe/prior"], out["kid_probe/prior"] = scored["fd_probe"], scored["kid_probe"]
    s.notes["fd_probe"] = QUALITY_NOTE
    return out


def identity_family(s) -> dict:
    """Identity cosine and retrieval in a face embedder, by each configured protocol (ours, SF2F, Wen)."""
    id_cfg, out = s.settings.identity, {}
    if s.embedder == "probe":
        embedder, embed = "probe", lambda x: s.probe[0].predict(x)[0]
    else:
        embedder, embed = face_embedder(s.embedder, id_cfg.weights_path, s.download, s.model.device)
    protocols = check_protocols(id_cfg.protocol)
    gen_emb, real_emb = embed(s.gen), embed(normalize(s.real_u8))
    if "ours" in protocols:
        out.update(
            identity_metrics(gen_emb, s.gen_labels, real_emb, s.real_labels, len(s.names), id_cfg, s.notes, s.resamples)
        )
    if "sf2f" in protocols:
        if id_cfg.sf2f.generation == "average":
            query_labels = torch.unique(s.gen_labels)
            embedded = mean_voices(s.voices, s.gen_labels)
            query = embed(generate_split(s.model, s.datamodule, s.name, embedded=embedded)[0])
        else:  # one face per speaker, from one of its utterances (drawn with the identity seed)
            pick = one_per_identity(s.gen_labels, id_cfg.seed)
            query, query_labels = gen_emb[pick], s.gen_labels[pick]
        centers = centroids(real_emb, s.real_labels, len(s.names))
        out.update(sf2f_metrics(query, query_labels, centers, id_cfg.sf2f, s.notes, s.resamples))
    if "wen" in protocols:
        info = s.datamodule.speaker_info() if hasattr(s.datamodule, "speaker_info") else {}
        sexes = [info.get(n, {}).get("sex", "") for n in s.names]
        wen = id_cfg.wen
        out.update(wen_metrics(gen_emb, s.gen_labels, real_emb, s.real_labels, sexes, wen, s.notes, s.resamples))
    s.notes["identity_embedder"] = embedder
    return out


def attribute_family(s) -> dict:
    """Each trait read off the generated faces by the probe, against shuffled, chance, oracle and the sex+accent
    bound (the embedded corpus' attributes)."""
    names = s.names
    return attribute_scores(
        s.probe[0],
        s.probe[1],
        s.gen,
        [names[i] for i in s.gen_labels],
        normalize(s.real_u8),
        [names[i] for i in s.real_labels],
        s.attributes,
        s.skipped,
        s.resamples,
        train_names=list(s.datamodule.identities("train")),
        group_by=tuple(s.settings.attributes.group_by),
    )


def voice_family(s) -> dict:
    """Each trait read linearly off the voice embeddings (ridge fitted on the train split's utterances): what the
    encoder carries of it, beside what the generated faces show (`attr/`)."""
    names, settings = s.names, s.settings.voice
    train_x, train_labels = train_voices(s.model, s.datamodule, settings.seed)
    train_names = list(s.datamodule.identities("train"))
    return voice_scores(
        s.probe[1],
        (train_x, [train_names[i] for i in train_labels]),
        (s.voices, [names[i] for i in s.gen_labels]),
        s.attributes,
        settings.ridge,
        s.resamples,
    )


def _module(spec):
    """A metric network given in the config: None, an nn.Module, or a `_target_` dict to instantiate."""
    if spec is None or isinstance(spec, torch.nn.Module):
        return spec
    return hydra.utils.instantiate(spec)


def build_fid(fid: FIDSettings, download: bool, device, cache_dir) -> FID:
    """FID of the settings (Inception unless `feature` names another net); may raise MetricUnavailable."""
    return FID(_module(fid.feature), fid.weights_path, download, cache_dir).to(device)


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


def build_distance(ppl: PPLSettings, download: bool) -> torch.nn.Module:
    """The path-length image distance: LPIPS-VGG16 unless `distance` names another network."""
    return _module(ppl.distance) or LPIPSDistance(ppl.vgg_path, download)


PPL_KEYS = {"w": "ppl_wend", "z": "ppl_zend"}  # metrics.ppl.spaces -> result key


def check_ppl_space(G, space: str) -> None:
    """MetricUnavailable where G has no such latent space: W needs a mapping network (DCGAN has none)."""
    if space == "w" and not hasattr(G, "mapping"):
        raise MetricUnavailable("path length in W needs a StyleGAN generator (.mapping); this one has none")


def ppl_metric(model, ppl: PPLSettings, space: str, distance: torch.nn.Module, voices: Tensor | None = None):
    """Endpoint path length of the EMA generator in `space` (w: ppl2_wend, z: ppl_zend) under the image
    `distance` (build_distance). Latents: pairs of held-out voices (`voices`, the split's embeddings) when
    ppl.latents is `voices`, else N(0, I)."""
    G = model.G_ema
    check_ppl_space(G, space)
    latents = None
    if ppl.latents == "voices":
        if voices is None:
            raise ValueError("ppl_metric: metrics.ppl.latents=voices needs the held-out voice embeddings")
        latents = pair_latents(voices.to(model.device), model.hparams.get("noise_z_dim", 0))
    return path_length(
        G,
        distance.to(model.device),
        ppl.num_samples,
        ppl.batch_size,
        ppl.epsilon,
        latents=latents,
        seed=ppl.seed,
        space=space,
    )


def ppl_note(ppl: PPLSettings, split: str, num_voices: int) -> str:
    """How the path lengths were measured, for the report's header."""
    latents = (
        f"pairs of different {split} utterances' voice embeddings (of {num_voices})"
        if ppl.latents == "voices"
        else "N(0, I)"
    )
    distance = ppl.distance
    if isinstance(distance, Mapping):
        distance = distance.get("_target_")
    distance = "LPIPS-VGG16" if distance is None else distance if isinstance(distance, str) else type(distance).__name__
    return (
        f"endpoints (t = 0), eps {ppl.epsilon:g}, {ppl.num_samples} samples, "
        f"1st-99th percentile mean; latents: {latents}; distance: {distance}"
    )


def identity_metrics(
    gen_emb, gen_labels, real_emb, real_labels, num_ids, cfg: IdentitySettings, notes: dict, resamples: int
) -> dict:
    """id_cosine, and per gallery size actually used g (the configured sizes clamped to the identities there
    are, plus always the whole set): `recall@k_g<g>` with its `/ci95` over identities, `/shuffled` (queries'
    identities permuted) and `/chance` (k / g)."""
    centers = centroids(real_emb, real_labels, num_ids)
    out = {"id_cosine": identity_cosine(gen_emb, gen_labels, centers)}
    ks, repeats, seed = tuple(cfg.ks), cfg.repeats, cfg.seed
    sizes = sorted({min(size, num_ids) for size in cfg.galleries} | {num_ids})
    for size in cfg.galleries:
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


def sf2f_metrics(query, query_labels, centers, cfg: SF2FSettings, notes: dict, resamples: int) -> dict:
    """The SF2F table's figures (`lightning_modules.metrics.protocols`): `sf2f/cosine`, `sf2f/L1`, `sf2f/L2` (mean
    over identities) and `sf2f/recall@k` in the fixed gallery blocks, each with its `/ci95` over identities;
    recall's `/chance` is k / block. `sf2f/block` and `sf2f/blocks` say which galleries were used."""
    block, ks = cfg.block, tuple(cfg.ks)
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
        f"{len(query)} identities, one face each ({cfg.generation}), ranked in "
        f"{out['sf2f/blocks']} fixed block(s) of {size} sorted identities"
        + (f" (asked for {block}; the split has {num_ids})" if size < block else "")
        + (f"; recall@{dropped} left out (k >= block)" if dropped else "")
    )
    return out


def wen_metrics(gen_emb, gen_labels, real_emb, real_labels, sexes, cfg: WenSettings, notes: dict, resamples: int):
    """Wen et al.'s 1:2 matching accuracy of every generated face, `wen/match`, and with impostors of the
    speaker's sex, `wen/match_sex` (where every identity's sex is known), each with `/ci95` over identities and
    `/chance` 0.5."""
    repeats, seed = cfg.repeats, cfg.seed
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
