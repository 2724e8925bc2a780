"""Training progress as NVlabs' users read it, one line per tick: kimg, s/kimg, img/s, the losses, memory and the
time left. Rich's progress bar draws only on a terminal, so a redirected log (`make run > log.txt`, nohup, CI, a
cluster job) showed nothing for the whole of training; `TickLines` prints the line there, and `TickProgressBar`
shows the same figures on a terminal."""

from __future__ import annotations

import math
import resource
import sys
import time

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import RichProgressBar

from lightning_modules.callbacks.checkpoint import images_seen


class TickMeter:
    """The figures of a tick: rates over the images since the previous tick, losses as last logged."""

    def __init__(self):
        self.since = None  # (seconds, images) at the previous tick

    def start(self, trainer, pl_module):
        self.since = (time.perf_counter(), images_seen(trainer, pl_module))

    def figures(self, trainer, pl_module) -> dict[str, float]:
        now, count = time.perf_counter(), images_seen(trainer, pl_module)  # images (GAN) or steps (stage 1)
        if self.since is None:
            self.since = (now, count)
        seconds, done = now - self.since[0], count - self.since[1]
        self.since = (now, count)
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if hasattr(pl_module, "cur_nimg"):
            out = {"kimg": count / 1000}
            if done > 0:
                out.update({"s/kimg": 1000 * seconds / done, "img/s": done / seconds})
        else:
            out = {"step": count}
            if done > 0:
                out["s/step"] = seconds / done
        loss_D = [logged[k] for k in ("loss/D_real", "loss/D_fake") if k in logged]
        if loss_D:
            out["loss D"] = sum(loss_D)  # NVlabs' Loss/D/loss: real and fake terms together
        for key, name in (("loss/G_adv", "loss G"), ("train/loss", "loss")):  # the GAN's; encoder pretraining's
            if key in logged:
                out[name] = logged[key]
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            out["mem GiB"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        else:  # peak resident memory of this process (Linux reports KiB)
            out["mem GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        total = pl_module.hparams.get("total_kimg")
        if total and "s/kimg" in out:
            out["eta s"] = max(total - out["kimg"], 0.0) * out["s/kimg"]
        return out


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s" if m else f"{s} s"


def tick_line(figures: dict[str, float]) -> str:
    """`kimg 4.03 | 27.9 s/kimg | 35.8 img/s | loss D 1.21 G 0.93 | mem 1.8 GiB | eta 6 min 12 s`."""
    parts = [f"kimg {figures['kimg']:.2f}"] if "kimg" in figures else [f"step {figures['step']:.0f}"]
    if "s/kimg" in figures:
        parts += [f"{figures['s/kimg']:.1f} s/kimg", f"{figures['img/s']:.1f} img/s"]
    if "s/step" in figures:
        parts.append(f"{figures['s/step']:.2f} s/step")
    losses = [f"D {figures['loss D']:.2f}"] if "loss D" in figures else []
    losses += [f"G {figures['loss G']:.2f}"] if "loss G" in figures else []
    losses += [f"{figures['loss']:.3f}"] if "loss" in figures else []
    if losses:
        parts.append("loss " + " ".join(losses))
    parts.append(f"mem {figures['mem GiB']:.1f} GiB")
    if "eta s" in figures:
        parts.append(f"eta {_duration(figures['eta s'])}")
    return " | ".join(parts)


class TickLines(Callback):
    """Print `tick_line` every `every_s` seconds of training where stdout is not a terminal."""

    def __init__(
        self,
        every_s: float = 30.0,  # seconds between lines; 0 = a line at every logging step
        only_without_terminal: bool = True,  # on a terminal the progress bar shows the same figures
        stream=None,  # where the lines go (None: sys.stdout at each line)
    ):
        self.every_s, self.only_without_terminal, self.stream = every_s, only_without_terminal, stream
        self.meter, self._last = TickMeter(), 0.0

    def _stream(self):
        return self.stream if self.stream is not None else sys.stdout

    def active(self) -> bool:
        stream = self._stream()
        return not (self.only_without_terminal and hasattr(stream, "isatty") and stream.isatty())

    def on_train_start(self, trainer, pl_module):
        self.meter.start(trainer, pl_module)
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or not self.active():
            return
        if self.every_s > 0:
            due = time.perf_counter() - self._last >= self.every_s
        else:  # Lightning's own test of a logging step (log_every_n_steps batches, and the last one)
            due = trainer._logger_connector.should_update_logs
        if due:
            self._last = time.perf_counter()
            print(tick_line(self.meter.figures(trainer, pl_module)), file=self._stream(), flush=True)


class TickProgressBar(RichProgressBar):
    """Rich's bar with the tick figures beside it, measured afresh every `every_s` seconds (the bar refreshes
    far more often: rates over a fraction of a step would jump)."""

    def __init__(self, *args, every_s: float = 5.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.meter, self.every_s, self._figures, self._last = TickMeter(), every_s, {}, -math.inf

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        if trainer.training:
            if time.perf_counter() - self._last >= self.every_s:
                self._last = time.perf_counter()
                self._figures = {k: round(v, 2) for k, v in self.meter.figures(trainer, pl_module).items()}
            items.update(self._figures)
        return items
