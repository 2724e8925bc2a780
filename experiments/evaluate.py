"""Evaluate a checkpoint: `python -m experiments.evaluate ckpt=PATH [split=test] [out=DIR]`.

Rebuilds the training-time datamodule from the checkpoint, runs `lightning_modules.metrics.evaluate`, and
writes metrics_<split>.json plus a markdown summary naming every metric it could not compute and why.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.cli_errors import one_line_errors
from datamodules.files import write_atomic
from datamodules.pipeline import stored_features
from datamodules.voxvgg import VoxVGGDataModule
from experiments.schema import check_command_config
from lightning_modules.build import check_network_config
from lightning_modules.metrics import evaluate, summary_markdown
from lightning_modules.safe_load import load_data, refuse_unreadable
from lightning_modules.voice2face import ENCODER_MODES, RETIRED_HPARAMS, Voice2FaceGAN


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_checkpoint(ckpt: str | Path) -> dict:
    """A voice2face training checkpoint, read once as data (weights_only), its networks' configs checked before
    anything is built from them."""
    path = Path(ckpt)
    refuse_unreadable(
        path,
        f"{path}: checkpoint not found (ckpt= must name a .ckpt written by training)",
        "ckpt= must name a .ckpt written by training (a run's checkpoints/last.ckpt)",
    )
    state = load_data(path, "a voice2face checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a voice2face training checkpoint (no hyper_parameters / state_dict)")
    state["hyper_parameters"] = {k: v for k, v in state["hyper_parameters"].items() if k not in RETIRED_HPARAMS}
    for part in ("encoder", "generator", "discriminator"):
        check_network_config(state["hyper_parameters"].get(part), f"{path}: model.{part}")
    check_arguments(Voice2FaceGAN, state["hyper_parameters"], f"{path}: hyper_parameters")
    mode = state["hyper_parameters"].get("encoder_mode", "joint")
    if mode not in ENCODER_MODES:  # model_from builds every checkpoint as joint, so Voice2FaceGAN cannot check it
        raise ValueError(
            f"{path}: hyper_parameters: encoder_mode {mode!r} is not one of {ENCODER_MODES} (a checkpoint of "
            "another version?); use the version that wrote it"
        )
    return state


def check_arguments(cls, kwargs: dict, what: str, fix: str = "use the version that wrote it") -> None:
    """ValueError naming the arguments `cls` does not take and those it needs but lacks: a checkpoint of another
    voice2face version would otherwise stop with a TypeError traceback."""
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(kwargs) - set(params))
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    missing = [n for n in missing if n not in kwargs]
    problems = [f"does not take {unknown}"] * bool(unknown) + [f"needs {missing}"] * bool(missing)
    if problems:
        raise ValueError(
            f"{what}: {cls.__name__} of this voice2face version {' and '.join(problems)} (a checkpoint of "
            f"another version?); {fix}"
        )


def model_from(state: dict, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """Voice2FaceGAN of a read checkpoint, in eval mode on `device` (as Lightning's load_from_checkpoint builds it:
    the stored hyper-parameters, then on_load_checkpoint, then the weights, strictly)."""
    hparams = state["hyper_parameters"]
    # The checkpoint's weights include the encoder's, so its stage-1 file (encoder_ckpt) is not read: it need
    # not exist here (a run folder moved or handed over). Built as a joint encoder, then given its own mode back.
    model = Voice2FaceGAN(**{**hparams, "encoder_mode": "joint", "encoder_ckpt": None})
    model.hparams.update(encoder_mode=hparams.get("encoder_mode", "joint"), encoder_ckpt=hparams.get("encoder_ckpt"))
    model.encoder.requires_grad_(model.hparams.encoder_mode != "frozen")
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"], strict=True)
    return model.to(device).eval()


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """Voice2FaceGAN from a checkpoint file, in eval mode on `device`."""
    return model_from(read_checkpoint(ckpt), device)


def data_hparams(ckpt: str | Path | dict, overrides: dict | None = None) -> dict:
    """The datamodule hyper-parameters a checkpoint (a path, or one read by read_checkpoint) stores (Lightning keeps
    them), with `overrides` applied."""
    state = ckpt if isinstance(ckpt, dict) else load_data(ckpt, "a voice2face checkpoint")
    hparams = state.get("datamodule_hyper_parameters") if isinstance(state, dict) else None
    where = "the checkpoint" if isinstance(ckpt, dict) else ckpt
    if hparams is None:
        raise ValueError(
            f"{where}: no datamodule hyper-parameters in this checkpoint, so its training-time "
            "data and audio features are unknown (train through experiments.run)"
        )
    hparams = {**dict(hparams), "features": stored_features(hparams.get("features")), **(overrides or {})}
    check_arguments(
        VoxVGGDataModule,
        hparams,
        f"{where}: datamodule_hyper_parameters (with data_overrides)",
        "use the version that wrote it, or fix data_overrides",
    )
    return hparams


def build_datamodule(ckpt: str | Path | dict, overrides: dict | None = None, setup: bool = True) -> VoxVGGDataModule:
    """The datamodule the checkpoint (a path, or one read by read_checkpoint) was trained with, with `overrides`
    applied; prepared and set up when `setup`."""
    dm = VoxVGGDataModule(**data_hparams(ckpt, overrides))
    if setup:
        dm.prepare_data()
        dm.setup("test")
    return dm


def check_earlier_metrics(file: Path, meta: dict, overwrite: bool) -> None:
    """Refuse to replace the metrics of another checkpoint, or of this file at another kimg (a later last.ckpt),
    unless told to: evaluating each snapshot of a run into its checkpoints folder kept only the last one's."""
    if overwrite or not file.is_file():
        return
    try:
        earlier = json.loads(file.read_text()).get("_meta") or {}
    except (ValueError, AttributeError):  # not ours, or cut short: still something a person may want
        earlier = {}
    if (earlier.get("ckpt"), earlier.get("kimg")) != (meta["ckpt"], meta["kimg"]):
        source = f"{earlier['ckpt']} at {earlier.get('kimg')} kimg" if earlier.get("ckpt") else "another run"
        raise FileExistsError(
            f"{file}: holds the metrics of {source}; pass out=DIR (a folder of its own for this checkpoint), or "
            "overwrite=true to replace them"
        )


def run(cfg: DictConfig) -> dict:
    check_command_config(cfg, "evaluate")
    ckpt = Path(cfg.ckpt)
    state = read_checkpoint(ckpt)  # read once, for the model and the data
    model = model_from(state, pick_device(cfg.device))
    out = Path(cfg.out) if cfg.out else ckpt.parent
    meta = {
        "ckpt": str(ckpt.resolve()),
        "split": cfg.split,
        "kimg": getattr(model, "cur_nimg", 0) / 1000,
        "generator": model.hparams.get("generator", {}).get("_target_"),
        "encoder": {k: v for k, v in model.hparams.get("encoder", {}).items() if k in ("_target_", "se", "act")},
    }
    check_earlier_metrics(out / f"metrics_{cfg.split}.json", meta, cfg.get("overwrite", False))
    dm = build_datamodule(state, OmegaConf.to_container(cfg.data_overrides))
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    metrics_cfg["cache_dir"] = metrics_cfg.get("cache_dir") or str(out / "fid_cache")
    result = evaluate(model, dm, metrics_cfg, split=cfg.split)
    result["_meta"] = meta
    out.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(result, f"{ckpt.name} ({cfg.split})")
    # the .md first: the .json, which the check above reads, then always describes a complete pair
    write_atomic(out / f"metrics_{cfg.split}.md", lambda p: p.write_text(markdown))
    write_atomic(out / f"metrics_{cfg.split}.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(markdown)
    print(f"wrote {out / f'metrics_{cfg.split}.json'}")
    return result


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
