"""The markdown of a metrics result: the headline table, the full summary, and the SF2F paper's table."""

from __future__ import annotations

LABELS = {  # display names in the summary; other keys are shown as they are
    "fid": "FID",
    "ppl_wend": "Path length in W (ppl2_wend)",
    "ppl_zend": "Path length in Z (ppl_zend)",
    "id_cosine": "Identity cosine",
}


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
        if f"{key}/prior" in result:  # what the frozen pretrained G draws without a voice
            prior = result[f"{key}/prior"]
            ratio = f" (×{prior / floor:.1f})" if floor > 0 else ""
            lines.append(f"| {key} of the pretrained G alone (random z) | {prior:.4g} | | | | {floor:.4g}{ratio} | |")
    for part, label in (("between", "between speakers"), ("within", "within a speaker")):  # where a gap comes from
        if f"probe_spread/{part}" in result:
            value = result[f"probe_spread/{part}"]
            lines.append(f"| spread {label} (probe features; real faces = 1) | {value:.3f} | | | | 1 | |")
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
