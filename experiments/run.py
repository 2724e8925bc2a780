"""Train a voice2face model: `python -m experiments.run [+exp=NAME] [overrides]`.

Thin entry point over `train(cfg)`, which tests call directly with a composed config.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

import kernels
from datamodules.cli_errors import one_line_errors
from experiments.preflight import check_before_folder, moved_away
from lightning_modules.io.safe_load import load_data, refuse_unreadable
from lightning_modules.io.state_dict import compare_state_dict
from lightning_modules.voice2face import CHECKPOINT_FORMAT, Voice2FaceGAN

log = logging.getLogger(__name__)


SAME_RUN_KEYS = (  # what a checkpoint of another experiment differs in, even where its weights have our shapes
    "model.encoder",
    "model.generator",
    "model.discriminator",
    "data.root",
    "data.corpus",
    "data.face_size",
    "data.face_align",
    "data.features",
    "model.latent_space",
)


def check_last_is_this_run(ckpt: str, cfg: DictConfig) -> None:
    """`ckpt_path=last` takes the newest last.ckpt of every run: one of another experiment whose weights have the
    same shapes (with and without noise inputs, say) would be resumed under this config without a word. Refuse
    it when its run's config.yaml differs from this one in the networks or the data."""
    config = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        log.info("ckpt_path=last: resuming %s (no config.yaml beside it to compare)", ckpt)
        return
    # unresolved on both sides: the saved config's ${hydra:...} values cannot be resolved outside its run
    saved, this = (OmegaConf.to_container(c, resolve=False) for c in (OmegaConf.load(config), cfg))
    differ = [k for k in SAME_RUN_KEYS if _dotted(saved, k) != _dotted(this, k)]
    if differ:
        raise ValueError(
            f"ckpt_path=last: the newest run ({ckpt}) has other {', '.join(differ)} than this config (see {config}); "
            "pass ckpt_path=<the checkpoints/last.ckpt of the run to resume>"
        )
    log.info("ckpt_path=last: resuming %s", ckpt)


def _dotted(plain: dict, key: str):
    for part in key.split("."):
        plain = plain.get(part) if isinstance(plain, dict) else None
    return plain


def resolve_ckpt(ckpt_path: str | None, log_dir: str) -> str | None:
    """`last` = the newest `last.ckpt` under the run folders; a path must exist."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        found = sorted(Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {log_dir}; pass ckpt_path=<path to a .ckpt> instead"
            )
        return str(found[-1])
    refuse_unreadable(
        ckpt_path,
        f"ckpt_path={ckpt_path}: no such checkpoint file",
        "ckpt_path= must name a .ckpt file (a run's checkpoints/last.ckpt or snapshot-*.ckpt)",
    )
    return ckpt_path


RESUME_KEYS = ("generator_train", "encoder_mode")  # settings that change what the optimizers hold, not the weights


def check_checkpoint(path: str, model: L.LightningModule, this_run: Path | None = None) -> None:
    """Open a resume checkpoint as data only (no code runs) and check that it fits `model`, so a bad file fails
    before training with its name and a fix; Lightning's own errors name neither. `this_run`: the folder of this
    session, whose config.yaml it has already replaced (the earlier one is then its newest config.N.yaml)."""
    ckpt = load_data(
        path,
        "a checkpoint (ckpt_path)",
        fix=f"resume from another file of {Path(path).parent} (snapshot-*.ckpt) or train afresh without ckpt_path",
    )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"ckpt_path={path}: not a Lightning training checkpoint (no state_dict); pass the "
            f"last.ckpt or snapshot-*.ckpt of a run's checkpoints/ folder"
        )
    folder = Path(path).resolve().parent.parent
    config = folder / "config.yaml"
    numbered = {int(p.stem[len("config.") :]): p for p in folder.glob("config.*.yaml") if p.stem[7:].isdigit()}
    earlier = [numbered[n] for n in sorted(numbered)]
    if this_run is not None and folder == Path(this_run).resolve() and earlier:
        config = earlier[-1]  # save_config moved the session's that wrote the checkpoint there
    same_config = (
        f"use the overrides of the run that wrote it ({config})"
        if config.is_file()
        else "use the experiment and model overrides of the run that wrote it"
    )
    if isinstance(model, Voice2FaceGAN) and not any(str(k).startswith("voice2face_") for k in ckpt):
        raise ValueError(
            f"ckpt_path={path}: not a voice2face checkpoint (no voice2face_* entries: a Lightning "
            "checkpoint of another project?); pass the last.ckpt or snapshot-*.ckpt of a voice2face "
            "run"
        )
    if isinstance(model, Voice2FaceGAN) and ckpt.get("voice2face_format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"ckpt_path={path}: written by another version of voice2face (checkpoint format "
            f"{ckpt.get('voice2face_format')}, this code reads {CHECKPOINT_FORMAT}); resume it with the voice2face "
            f"version that wrote it, or train afresh without ckpt_path"
        )
    stored = ckpt.get("hyper_parameters") or {}
    changed = [
        k for k in RESUME_KEYS if isinstance(model, Voice2FaceGAN) and k in stored and stored[k] != model.hparams[k]
    ]
    if changed:
        was = ", ".join(f"model.{k}={stored[k]}" for k in changed)
        now = ", ".join(f"model.{k}={model.hparams[k]}" for k in changed)
        raise ValueError(
            f"ckpt_path={path}: trained with {was}, and this config says {now}: a resume keeps the optimizers' "
            f"parameter groups, so {same_config}, or train afresh without ckpt_path"
        )
    compare_state_dict(
        model,
        ckpt["state_dict"],
        f"ckpt_path={path}: written by a different model than {type(model).__name__} as configured",
        fix=same_config,
    )


def build_callbacks(cfg: DictConfig, with_logger: bool) -> list[L.Callback]:
    """Every configured callback (conf/callbacks, in its order; null ones are off)."""
    return [
        hydra.utils.instantiate(c)
        for name, c in (cfg.get("callbacks") or {}).items()
        if c and "_target_" in c and (with_logger or name != "lr_monitor")  # the monitor needs a logger
    ]


def build_trainer(cfg: DictConfig, loggers: list) -> L.Trainer:
    """The configured Trainer with the configured callbacks and `loggers`."""
    return instantiate_trainer(cfg, callbacks=build_callbacks(cfg, bool(loggers)), logger=loggers or False)


def instantiate_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    """cfg.trainer with `kwargs` on top; a setting Lightning refuses (devices=0, an unknown precision, ...) is a
    config error named by its section, not Hydra's InstantiationException traceback."""
    try:
        return hydra.utils.instantiate(cfg.trainer, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"config: trainer: {type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]}; fix the "
            "trainer override(s)"
        ) from err


# Where W&B keeps staging files, caches and settings unless told otherwise (its WANDB_*_DIR variables).
WANDB_HOME_DIRS = {
    "WANDB_DATA_DIR": ".local/share/wandb",
    "WANDB_CACHE_DIR": ".cache/wandb",
    "WANDB_CONFIG_DIR": ".config/wandb",
}


def build_loggers(cfg: DictConfig) -> list:
    configs = [c for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    if any(c._target_.endswith("WandbLogger") for c in configs):
        wandb_dirs(Path(cfg.paths.output_dir) / "wandb")
    return [hydra.utils.instantiate(c) for c in configs]


def wandb_dirs(inside: Path) -> None:
    """W&B writes under HOME as well as the run folder; where HOME is read-only (a container, a shared account) a
    run failed at its first W&B table, mid-training. Each of its HOME folders that cannot be written moves
    `inside` the run folder instead (a WANDB_*_DIR the user set is kept)."""
    for var, default in WANDB_HOME_DIRS.items():
        if os.environ.get(var):
            continue
        folder = Path.home() / default
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                continue
        except OSError:
            pass
        os.environ[var] = str(inside / var.lower())
        log.info("W&B: %s cannot be written; %s=%s", folder, var, os.environ[var])


def is_launching_rank() -> bool:
    """True in the process that owns the run folder: global rank 0 (Lightning's DDP children, torchrun and SLURM
    set these variables; a plain run has none)."""
    return all(int(os.environ.get(v, 0)) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def run_folder(out: Path):
    """The run folder, held under an exclusive lock (`.run.lock`) for the whole run, so a second run started into
    it is refused instead of mixing checkpoints, logs and samples. Released by the OS if the process dies."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".run.lock", "a+") if is_launching_rank() else None
    except OSError as err:
        raise OSError(
            f"run folder {out} is not writable ({err}); point paths.root_dir (or VOICE2FACE_ROOT, or "
            f"hydra.run.dir) to a writable place"
        ) from err
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise BlockingIOError(
                    f"run folder {out} is in use by {holder}; wait for that run to end, or give "
                    "this one another folder (hydra.run.dir=...)"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            lock.flush()
        yield out
    finally:
        if lock is not None:
            lock.close()


def save_config(cfg: DictConfig, out: Path) -> None:
    """config.yaml of this session; the one of an earlier session (a resume into the same folder) is kept as
    config.<n>.yaml, n = 1, 2, ... in order (one past the highest n present, so none is ever replaced)."""
    target = out / "config.yaml"
    if target.is_file():
        n = 1 + max((int(p.stem[7:]) for p in out.glob("config.*.yaml") if p.stem[7:].isdigit()), default=0)
        os.replace(target, out / f"config.{n}.yaml")
    OmegaConf.save(cfg, target, resolve=False)


def earlier_run(cfg: DictConfig, out: Path) -> list[Path]:
    """What an earlier run left in `out` that this one would overwrite or mix with its own: checkpoints, the
    CSV log and the stage-1 encoder (which a run in this folder would reuse as its own)."""
    checkpoint = (cfg.get("callbacks") or {}).get("checkpoint") or {}
    ckpt_dir = Path(checkpoint.get("dirpath") or out / "checkpoints")
    found = [*sorted(ckpt_dir.glob("*.ckpt")), out / "csv" / "metrics.csv", out / "stage1"]
    return [p for p in found if p.exists()]


def check_fresh_folder(cfg: DictConfig, out: Path, ckpt_path: str | None) -> None:
    """Refuse a run into a folder holding another run, unless it resumes that run from one of its checkpoints:
    the new run's checkpoints would replace the earlier ones and its log rows join the earlier log."""
    resumes_here = ckpt_path is not None and out.resolve() in Path(ckpt_path).resolve().parents
    left = earlier_run(cfg, out)
    if left and not resumes_here:
        checkpoints = [p for p in left if p.suffix == ".ckpt"]
        last = [p for p in checkpoints if p.name == "last.ckpt"] or checkpoints[-1:]
        if last:  # what will work, from what is there: a checkpoint to resume from
            fix = f"resume it with ckpt_path={last[0]}"
        elif left == [out / "stage1"] and not (out / "stage1" / "encoder.pt").is_file():
            fix = f"it stopped in stage 1, which keeps nothing to resume from: remove {out / 'stage1'} and run again"
        else:
            fix = "it left no checkpoint to resume from: move its files away"
        raise FileExistsError(
            f"run folder {out} already holds an earlier run ({', '.join(str(p) for p in left[:3])}); {fix}, or give "
            "this run another folder (hydra.run.dir=...)"
        )


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the configured model on the configured data, then evaluate it; returns (metrics, objects)."""
    check_before_folder(cfg)
    with run_folder(Path(cfg.paths.output_dir)) as out:
        ckpt_path = resolve_ckpt(cfg.get("ckpt_path"), cfg.paths.log_dir)
        if cfg.get("ckpt_path") == "last":
            check_last_is_this_run(ckpt_path, cfg)
        if is_launching_rank():
            check_fresh_folder(cfg, out, ckpt_path)
            save_config(cfg, out)
        return _train(cfg, out, ckpt_path)


def _train(cfg: DictConfig, out: Path, ckpt_path: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    L.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")  # plain types: checkpoints stay weights_only
    datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.get("pretrain_encoder") and cfg.model._target_.endswith("Voice2FaceGAN"):  # else this run is stage 1
        encoder_file = pretrain_encoder(cfg, datamodule, out, ckpt_path)
        with open_dict(cfg):
            cfg.model.encoder_ckpt = str(encoder_file)
    generator_init = cfg.model.get("generator_init")
    if ckpt_path and moved_away(cfg):
        # The checkpoint holds the G and D the file gave (grafted when the run began), and the resume loads its
        # weights anyway: it stands in for the moved file, which the hyper-parameters go on naming.
        log.info("model.generator_init=%s is gone; its G and D are read from %s", generator_init, ckpt_path)
        with open_dict(cfg):
            cfg.model.generator_init = str(ckpt_path)
    model = hydra.utils.instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        feature_dim=datamodule.feature_dim,
        _recursive_=False,
    )
    if generator_init:
        model.hparams.generator_init = generator_init
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, loggers)
    if ckpt_path:
        check_checkpoint(ckpt_path, model, out)
    trainer.fit(model, datamodule, ckpt_path=ckpt_path, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if hasattr(model, "train_seconds"):
        metrics.update({"run/kimg": model.cur_nimg / 1000, "run/train_s": model.train_seconds})
        if trainer.strategy.root_device.type == "cuda":
            metrics["run/peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
            metrics["run/peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if cfg.get("evaluate") and hasattr(model, "generate") and trainer.is_global_zero:
        from lightning_modules.metrics import evaluate, headline_markdown, summary_markdown

        model.eval()
        result = evaluate(model, datamodule, cfg.metrics, split=cfg.eval_split)
        (out / f"metrics_{cfg.eval_split}.json").write_text(json.dumps(result, indent=2, default=str))
        title = f"{cfg.task_name} ({cfg.eval_split})"
        headline = headline_markdown(result, getattr(datamodule, "attribute_kinds", None))
        (out / f"metrics_{cfg.eval_split}.md").write_text(f"{headline}\n{summary_markdown(result, title)}")
        metrics["_headline"] = headline
        metrics.update({f"{cfg.eval_split}/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        metrics["_skipped"] = result.get("_skipped", {})
    report_locations(out, metrics)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def pretrain_encoder(cfg: DictConfig, datamodule, out: Path, resume: str | None) -> Path:
    """Stage 1: the GAN's own encoder trained alone on speaker classification of the training identities
    (`cfg.pretrain_encoder`, conf/pretrain_encoder/: steps, batch_size, and EncoderPretrain's SGD under `model`).
    Returns its encoder.pt for stage 2 (`model.encoder_ckpt`). A run that resumes keeps its stage-1 file."""
    from lightning.pytorch.loggers import CSVLogger

    from lightning_modules.encoder_pretrain import ENCODER_FILENAME, EncoderPretrain

    for folder in ([Path(resume).resolve().parent.parent] if resume else []) + [out]:
        if (folder / "stage1" / ENCODER_FILENAME).is_file():
            return folder / "stage1" / ENCODER_FILENAME
    stage = cfg.pretrain_encoder
    model = EncoderPretrain(
        encoder=OmegaConf.to_container(cfg.model.encoder, resolve=True),
        num_classes=datamodule.num_classes,
        feature_dim=datamodule.feature_dim,
        **OmegaConf.to_container(stage.model, resolve=True),
    )
    trainer = instantiate_trainer(
        cfg,
        default_root_dir=str(out / "stage1"),
        max_steps=stage.steps,
        logger=CSVLogger(str(out / "stage1"), name="csv", version=""),
        callbacks=[hydra.utils.instantiate(ticks)] if (ticks := (cfg.get("callbacks") or {}).get("ticks")) else [],
        enable_progress_bar=False,
    )
    batch_size, datamodule.batch_size = datamodule.batch_size, stage.batch_size
    try:
        trainer.fit(model, datamodule)
    finally:
        datamodule.batch_size = batch_size
    acc = trainer.callback_metrics.get("train/acc")
    log.info(
        "stage 1 (speaker classification, %d steps): train accuracy %s",
        stage.steps,
        "n/a" if acc is None else f"{float(acc):.3f}",
    )
    return out / "stage1" / ENCODER_FILENAME


def report_locations(out: Path, metrics: dict[str, Any]) -> None:
    lines = [
        f"run folder   {out}",
        f"checkpoint   {out / 'checkpoints' / 'last.ckpt'}",
        f"samples      {out / 'samples'}",
        f"logs         {out / 'csv' / 'metrics.csv'} ; W&B offline: {out / 'wandb'} (upload: wandb sync)",
    ]
    if metrics.get("run/train_s"):
        memory = ""
        if "run/peak_alloc_gib" in metrics:
            memory = (
                f", peak GPU memory {metrics['run/peak_alloc_gib']:.2f} GiB allocated, "
                f"{metrics['run/peak_reserved_gib']:.2f} GiB reserved"
            )
        lines.append(
            f"training     {metrics['run/kimg']:.1f} kimg in {metrics['run/train_s']:.0f} s: "
            f"{1000 * metrics['run/kimg'] / metrics['run/train_s']:.1f} img/s, "
            f"{metrics['run/train_s'] / metrics['run/kimg']:.1f} s/kimg{memory}"
        )
    paths = kernels.report()  # which path each op's last call took (Triton or the PyTorch reference), and why
    if paths:
        lines.append("kernels      " + "; ".join(f"{op}: {path} ({why})" for op, (path, why) in sorted(paths.items())))
    scores = {k: v for k, v in metrics.items() if "/" in k and k.split("/")[0] in ("test", "val")}
    if scores:
        lines.append(f"metrics      {out}/metrics_*.json ({len(scores)} figures)")
        if not metrics.get("_headline"):
            lines += [f"  {k:<28} {v:.4f}" for k, v in sorted(scores.items())]
    for name, why in (metrics.get("_skipped") or {}).items():
        lines.append(f"  {name:<28} not computed: {why}")
    if metrics.get("_headline"):
        lines += ["", "Held-out faces at a glance (95 % intervals over identities):", metrics["_headline"]]
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
