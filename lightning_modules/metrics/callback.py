"""Lightning callback: FID and path length of the EMA generator every N kimg (paper figures 11-12), the probe
metrics of the held-out split (fd_probe against its floor, attribute recovery, retrieval; no download needed),
and a W&B table of held-out speakers (audio features, real face, generated face) when a WandbLogger is attached.

Metrics that cannot run (no weights, a generator without mapping) are skipped with their reason logged once.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning import Callback
from lightning.pytorch.loggers import WandbLogger

from lightning_modules.callbacks.schedule import next_due
from lightning_modules.metrics.evaluate import evaluate
from lightning_modules.metrics.families import (
    PPL_KEYS,
    build_distance,
    build_fid,
    check_ppl_space,
    fid_metric,
    ppl_metric,
)
from lightning_modules.metrics.fid import quantize
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.settings import MetricsSettings
from lightning_modules.metrics.split import embed_split, generate_split, real_faces
from lightning_modules.metrics.weights import MetricUnavailable, say_once


class MetricsCallback(Callback):
    def __init__(self, settings: MetricsSettings):  # the `metrics` config group; its `callback` section says when
        cb = settings.callback
        self.every_nimg = cb.every_kimg * 1000  # 0 = only at the end
        self.split, self.max_utterances, self.table_rows = cb.split, cb.max_utterances, cb.table_rows
        self.settings = settings
        self.ppl = replace(settings.ppl, num_samples=cb.ppl_num_samples)  # fewer than a final evaluation's
        # FID and PPL are the callback's own; inside the probe evaluation they are off, as are the intervals
        self.probe_settings = None
        if cb.probe_metrics:
            self.probe_settings = replace(
                settings,
                fid=replace(settings.fid, enabled=False),
                ppl=replace(settings.ppl, enabled=False),
                voice=replace(settings.voice, enabled=False),  # a pass over the train split: final evaluation only
                intervals=replace(settings.intervals, resamples=0),
                max_utterances=cb.max_utterances,
            )
        self._probe = None  # chosen (loaded or trained) on the first evaluation, then kept
        self._next_nimg = 0.0
        self._unavailable: set[str] = set()
        self._fid = None  # built on first use, then kept
        self._distance = None

    @classmethod
    def from_config(cls, metrics_cfg) -> MetricsCallback:
        """Build from the `metrics` config group (Hydra's `callbacks.metrics`)."""
        return cls(MetricsSettings.of(metrics_cfg))

    def on_train_start(self, trainer, pl_module):
        self._next_nimg = next_due(pl_module.cur_nimg, self.every_nimg)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.cur_nimg >= self._next_nimg:
            self._next_nimg = next_due(pl_module.cur_nimg, self.every_nimg)
            self.run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.run(trainer, pl_module)

    def run(self, trainer, pl_module) -> dict[str, float]:
        """Compute what is available (global rank 0 only), log it against progress/kimg, return it.
        Runs on forked RNG streams so that evaluating mid-run leaves training (and exact resume) unchanged."""
        if not trainer.is_global_zero:
            return {}
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self._run(trainer, pl_module)

    def _run(self, trainer, pl_module) -> dict[str, float]:
        metrics: dict[str, float | None] = {}
        if self.settings.fid.enabled and "fid" not in self._unavailable:
            scores = self._try("fid", self._fid_value, trainer, pl_module) or {}
            metrics.update({f"metrics/{k}": v for k, v in scores.items() if k in ("fid", "kid")})
        if self.ppl.enabled:
            voices = None  # the split's embeddings, made once for every space
            for space in self.ppl.spaces:
                name = PPL_KEYS[space]
                if name in self._unavailable:
                    continue
                if voices is None and self.ppl.latents == "voices":
                    voices, _ = embed_split(pl_module, trainer.datamodule, self.split, self.max_utterances)
                metrics[f"metrics/{name}"] = self._try(name, self._ppl_value, pl_module, space, voices)
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if self.probe_settings is not None and getattr(trainer.datamodule, "faces", None) is not None:
            metrics.update(self._probe_metrics(trainer, pl_module))
        if metrics:
            metrics["progress/kimg"] = pl_module.cur_nimg / 1000
            metrics["perf/train_s"] = getattr(pl_module, "train_seconds", 0.0)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if self.table_rows > 0:
            self.log_table(trainer, pl_module, trainer.datamodule)
        return metrics

    def _probe_metrics(self, trainer, pl_module) -> dict[str, float]:
        """Every scalar of `evaluate` on the held-out split (no FID/PPL, no intervals), keyed `<split>/...`."""
        if self._probe is None:
            self._probe = probe_for(trainer.datamodule, self.settings.probe)
        result = evaluate(pl_module, trainer.datamodule, self.probe_settings, self.split, probe=self._probe)
        return {
            f"{self.split}/{k}": float(v)
            for k, v in result.items()
            if isinstance(v, (int, float)) and not k.startswith("_")
        }

    def _fid_value(self, trainer, pl_module) -> dict[str, float]:
        if self._fid is None:  # Inception and the real statistics are loaded once per run
            cache = self.settings.cache_dir or f"{trainer.default_root_dir}/fid_cache"
            self._fid = build_fid(self.settings.fid, self.settings.download, pl_module.device, cache)
        fakes, _ = generate_split(pl_module, trainer.datamodule, self.split, self.max_utterances)
        real_u8, _, _ = real_faces(trainer.datamodule, self.split)
        return fid_metric(self._fid, quantize(fakes), real_u8, self.split, self.settings.fid.batch_size)

    def _ppl_value(self, pl_module, space: str, voices) -> float:
        check_ppl_space(pl_module.G_ema, space)
        if self._distance is None:
            self._distance = build_distance(self.ppl, self.settings.download)
        return ppl_metric(pl_module, self.ppl, space, self._distance, voices)

    def _try(self, name, fn, *args):
        try:
            return fn(*args)
        except MetricUnavailable as err:
            self._unavailable.add(name)  # weights do not appear mid-run: stop asking
            say_once(f"{name} skipped: {err}")
            return None

    def log_table(self, trainer, pl_module, dm) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        loader = dm.val_dataloader() if self.split == "val" else dm.test_dataloader()
        batch = next(iter(loader))
        n = min(self.table_rows, len(batch["audio"]))
        audio, lengths = (
            batch["audio"][:n].to(pl_module.device),
            batch["audio_lengths"][:n].to(pl_module.device),
        )
        was_training = pl_module.training
        pl_module.eval()  # the encoder's batch norm in inference mode: in training mode the table's batch moved its
        try:  # running statistics, so a run logging to W&B ended with other figures than one logging to CSV
            fake = pl_module.generate(audio, lengths, noise_mode="const").float().cpu()
        finally:
            pl_module.train(was_training)
        names = dm.identities(self.split)
        rows = []
        for i in range(n):
            feats = batch["audio"][i, :, : int(batch["audio_lengths"][i])].float()
            spec = (feats - feats.min()) / (feats.max() - feats.min() + 1e-8)  # [F, frames] as an image
            rows.append(
                [
                    names[int(batch["label"][i])],
                    wandb.Image(spec.flip(0).numpy(), caption="audio features"),
                    wandb.Image(((batch["face"][i].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()),
                    wandb.Image(((fake[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()),
                ]
            )
        for lg in wandb_loggers:
            lg.log_table(
                key=f"speakers/{pl_module.cur_nimg / 1000:.1f}kimg",
                columns=["identity", "audio features", "real face", "generated face"],
                data=rows,
            )
