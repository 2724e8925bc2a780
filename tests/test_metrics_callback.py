"""MetricsCallback: FID / path length every N kimg on the EMA generator, logged with progress/kimg."""

import logging
from types import SimpleNamespace

from conftest import metrics_settings
from test_evaluate import MSE, StandInData, StandInModel
from test_metrics import PixelFeatures

from lightning_modules.metrics.callback import MetricsCallback


def callback(fid=None, ppl=None, probe_metrics=False, **sections) -> MetricsCallback:
    """The callback of the shipped metrics config with `sections` changed (its `callback` section by keywords)."""
    cb = {"probe_metrics": probe_metrics, **sections.pop("callback", {})}
    return MetricsCallback(metrics_settings(fid=fid or {}, ppl=ppl or {}, callback=cb, **sections))


class RecordingLogger:
    def __init__(self):
        self.records = []

    def log_metrics(self, metrics, step):
        self.records.append((step, dict(metrics)))


def stand_in_trainer(tmp_path):
    dm = StandInData()
    dm.val_dataloader = dm.test_dataloader
    dm.split_ids = {**dm.split_ids, "val": dm.split_ids["test"]}
    return SimpleNamespace(
        datamodule=dm,
        loggers=[RecordingLogger()],
        default_root_dir=str(tmp_path),
        global_step=7,
        is_global_zero=True,
    )


def test_callback_logs_fid_and_ppl_every_n_kimg(tmp_path):
    trainer, model = stand_in_trainer(tmp_path), StandInModel()
    cb = callback(
        fid={"feature": PixelFeatures()},
        ppl={"distance": MSE()},
        callback={"every_kimg": 0.01, "ppl_num_samples": 8, "table_rows": 0},
    )
    model.cur_nimg = 0
    cb.on_train_start(trainer, model)
    model.cur_nimg = 4
    cb.on_train_batch_end(trainer, model, None, None, 0)
    assert trainer.loggers[0].records == []  # 4 images < 10
    model.cur_nimg = 12
    cb.on_train_batch_end(trainer, model, None, None, 1)
    ((step, logged),) = trainer.loggers[0].records
    assert step == 7 and set(logged) == {
        "metrics/fid",
        "metrics/kid",  # from the same Inception features as FID
        "metrics/ppl_zend",
        "metrics/ppl_wend",
        "progress/kimg",
        "perf/train_s",
    }
    assert logged["progress/kimg"] == 0.012
    assert list((tmp_path / "fid_cache").glob("fid_real_val-*.pt"))


def test_callback_says_once_and_logs_what_it_can(tmp_path, empty_hub, caplog):  # noqa: F811
    trainer, model = stand_in_trainer(tmp_path), StandInModel()
    model.cur_nimg = 1000
    cb = callback(ppl={"distance": MSE()}, callback={"every_kimg": 1, "ppl_num_samples": 8, "table_rows": 0})
    with caplog.at_level(logging.WARNING):
        cb.run(trainer, model)
        cb.run(trainer, model)
    logged = [{"metrics/ppl_zend", "metrics/ppl_wend", "progress/kimg", "perf/train_s"}] * 2
    assert [set(r) for _, r in trainer.loggers[0].records] == logged
    assert sum("fid skipped" in m for m in caplog.messages) == 1


def test_callback_logs_the_probe_metrics_of_the_split(tmp_path):
    trainer, model = stand_in_trainer(tmp_path), StandInModel()
    model.cur_nimg, model.train_seconds = 1000, 12.5
    cb = callback(
        fid={"enabled": False},
        ppl={"enabled": False},
        probe_metrics=True,
        probe={"steps": 20, "batch_size": 16},
        identity={"repeats": 2},
        callback={"table_rows": 0},
    )
    cb.run(trainer, model)
    ((_, logged),) = trainer.loggers[0].records
    assert {"val/fd_probe", "val/fd_probe/real", "val/attr/colour", "val/recall@1_g2"} <= set(logged)
    assert logged["perf/train_s"] == 12.5 and not any(k.endswith("/ci95") for k in logged)
    probe = cb._probe
    cb.run(trainer, model)
    assert cb._probe is probe  # trained once per run


def test_callback_from_config_reads_the_metrics_group():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("experiments/conf/metrics/default.yaml")
    cb = MetricsCallback.from_config(cfg)
    assert cb.every_nimg == cfg.callback.every_kimg * 1000 and cb.split == "val"
    assert cb.ppl.num_samples == cfg.callback.ppl_num_samples and cb.ppl.epsilon == 1e-4
    inner = cb.probe_settings  # the evaluation of the probe metrics: FID and PPL are the callback's own
    assert not inner.fid.enabled and not inner.ppl.enabled and inner.intervals.resamples == 0
    assert inner.max_utterances == cfg.callback.max_utterances and inner.probe == cb.settings.probe


def test_callback_wandb_table_of_speakers(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    class RecordingWandb(WandbLogger):
        def __init__(self):  # no W&B run: only the table call is recorded
            self.tables = []

        def log_table(self, key, columns=None, data=None, **kwargs):
            self.tables.append((key, columns, data))

    trainer, model = stand_in_trainer(tmp_path), StandInModel()
    trainer.loggers = [RecordingWandb()]
    model.cur_nimg = 2000
    callback(fid={"enabled": False}, ppl={"enabled": False}, callback={"table_rows": 2}).run(trainer, model)
    ((key, columns, rows),) = trainer.loggers[0].tables
    assert key == "speakers/2.0kimg" and columns[-2:] == ["real face", "generated face"]
    assert [r[0] for r in rows] == ["x0", "x1"] and len(rows[0]) == len(columns)
