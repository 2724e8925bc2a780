"""The model card (README.md) of a model folder (experiments.export format=pretrained): what the model is, what it
was trained on, its figures as experiments.evaluate measured them (with their intervals and baselines), and its
intended use and limits. huggingface_hub's metadata block heads it, so a hub shows it as a model card."""

import json
from pathlib import Path

from huggingface_hub import ModelCardData

# (key in metrics_<split>.json, what it measures, better when) shown where evaluate wrote them
FIGURES = (
    ("fd_probe", "Fréchet distance of generated to real faces in the face probe's features", "lower"),
    ("recall@1_g10", "recall@1 of the true face among 10 (identity retrieval)", "higher"),
    ("attr/sex", "sex of the generated face agrees with the speaker's", "higher"),
    ("attr/skin_tone", "skin tone R² against the speaker's face", "higher"),
    ("attr/hair_colour", "hair colour agrees with the speaker's face", "higher"),
    ("attr/hair_length", "hair length R² against the speaker's face", "higher"),
)


def _number(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def _interval(value):
    return f"[{value[0]:.3f}, {value[1]:.3f}]" if isinstance(value, list) and len(value) == 2 else "–"


def figures_table(metrics: dict) -> list[str]:
    rows = ["| figure | value | 95% interval | baseline | n (faces) |", "| --- | --- | --- | --- | --- |"]
    for key, what, better in FIGURES:
        if key not in metrics:
            continue
        if key == "fd_probe":
            baseline = f"real vs real {_number(metrics.get('fd_probe/real'))}"
            n = metrics.get("fd_probe/n")
        else:
            baseline = (
                f"chance {_number(metrics.get(key + '/chance'))}, shuffled {_number(metrics.get(key + '/shuffled'))}"
            )
            n = metrics.get("num_generated")
        rows.append(
            f"| {what} ({better} is better) | {_number(metrics[key])} | {_interval(metrics.get(key + '/ci95'))} "
            f"| {baseline} | {n if n is not None else '–'} |"
        )
    return rows


def _describe_data(data: dict) -> str:
    if data.get("root"):
        return f"a VoxCeleb1 ∩ VGGFace corpus prepared from `{Path(str(data['root'])).name}` (the three splits of it)"
    corpus = data.get("corpus") or {}
    return (
        f"the embedded synthetic corpus ({corpus.get('identities', '?')} identities drawn with seed "
        f"{corpus.get('seed', '?')}: synthesized speech and rendered faces; no real person), its train split"
    )


def _evaluation(ckpt: Path) -> list[str]:
    """The card's lines for each split that evaluate wrote metrics_<split>.json for, beside `ckpt` or in its run
    folder (the first found of each); none: []."""
    lines = []
    for split in ("test", "val"):
        for folder in (ckpt.parent, ckpt.parent.parent):
            file = folder / f"metrics_{split}.json"
            if not file.is_file():
                continue
            metrics = json.loads(file.read_text())
            lines += ["", f"`{file.name}` ({split} split, {metrics.get('kimg', '?')} kimg):", ""]
            lines += figures_table(metrics)
            if metrics.get("_probe"):
                lines += ["", f"Face probe of these figures: {metrics['_probe']}."]
            break
    return lines


def model_card(state: dict, ckpt: Path) -> str:
    """The README.md of the folder exported from `state` (read_checkpoint of `ckpt`): the metrics_<split>.json that
    evaluate wrote beside `ckpt`, or in its run folder, are quoted; where there are none the card says so."""
    hp, data = state["hyper_parameters"], state.get("datamodule_hyper_parameters") or {}
    progress = state.get("voice2face_progress") or {}
    encoder, generator = hp.get("encoder", {}), hp.get("generator", {})
    features = data.get("features") or {}
    init = f" of `{Path(str(hp['generator_init'])).name}`" if hp.get("generator_init") else ""
    meta = ModelCardData(
        library_name="voice2face",
        tags=["voice-to-face", "speech", "stylegan2", "face-generation"],
        pipeline_tag="audio-to-image",
    )
    lines = [
        "---",
        meta.to_yaml(),
        "---",
        "",
        f"# voice2face: voice → face at {hp.get('img_resolution')} px",
        "",
        "## What it is",
        f"- Voice encoder `{encoder.get('_target_', '?').rsplit('.', 1)[-1]}` (embedding {encoder.get('embed_dim')}, "
        f"squeeze-and-excitation {encoder.get('se', '?')}, activation {encoder.get('act', '?')}) on "
        f"{features.get('n_mels', '?')}-band {features.get('kind', '?')} features.",
        f"- Generator `{generator.get('_target_', '?').rsplit('.', 1)[-1]}`; the voice enters through "
        f"{hp.get('latent_space', 'z')}{init} (generator {hp.get('generator_train', 'trained')}).",
        f"- Trained {progress.get('cur_nimg', 0) / 1000:g} kimg in {progress.get('train_seconds', 0) / 60:.1f} min, "
        f"on {_describe_data(data)}: {hp.get('num_classes')} training speakers.",
        "",
        "## Evaluation",
    ]
    lines += _evaluation(ckpt) or ["Not evaluated: run `python -m experiments.evaluate ckpt=<this folder> split=test`."]
    lines += [
        "",
        "## Intended use and limits",
        "- Research on what a voice says about a face, at the level of populations. A voice does not determine a "
        "face: the output is a plausible face for traits the voice carries (sex, age, accent-linked looks), not "
        "the speaker's face. It must not be used to identify, profile or depict a real person.",
        "- Bias: it reproduces the people of its training data. VoxCeleb and VGGFace are celebrities from the web, "
        "skewed in nationality, age and skin tone; the embedded corpus is synthetic. Figures hold for data like the "
        "test split only.",
        "- Consent: run it only on recordings of people who agreed to it.",
        "",
        "## Files",
        "- `model.safetensors`: the voice encoder (with its moving average, which embeds, where the model keeps one) "
        "and the generator (EMA weights; the voice head where there is one).",
        "- `config.json`: the hyper-parameters that rebuild them and the voice pipeline (features, voice activity).",
        "- Use: `python -m experiments.generate ckpt=<this folder> audio=clip.wav out=faces/` (also `evaluate`, "
        "`project` and `model.generator_init`). Loading reads safetensors and JSON only.",
        "",
    ]
    return "\n".join(lines)
