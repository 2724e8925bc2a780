"""Train the shipped face probe: `python -m experiments.face_probe [out=FILE]` (`make face-probe`).

The probe behind fd_probe, the attribute scores and probe retrieval on the embedded corpus
(lightning_modules.metrics.probe), trained once on the default corpus' train split with `metrics.probe`'s settings
in float64, and written as safetensors with a record of how it was trained. `make face-probe` copies it into
lightning_modules/weights and records its SHA-256. Evaluations read it instead of retraining a probe each time, so
that their figures are measured with one instrument on every machine, as FID is with Inception's fixed weights.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from datamodules.cli_errors import one_line_errors
from datamodules.faces import faces_sha256
from datamodules.files import write_atomic
from experiments.schema import check_command_config, check_values
from lightning_modules.metrics.probe import probe_for, save_probe
from lightning_modules.metrics.settings import ProbeSettings


def train(cfg: DictConfig) -> Path:
    check_command_config(cfg, "face_probe")
    check_values(cfg, ["data"])
    torch.set_num_threads(cfg.threads)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    settings = replace(ProbeSettings.of(cfg.metrics.probe, "metrics.probe"), weights="retrain")
    probe, codec, _ = probe_for(datamodule, settings)
    faces = datamodule.faces("train")
    corpus = dict(cfg.data.corpus)
    about = {
        "trained_on": (
            f"the embedded corpus' train split: {len(faces)} identities, {sum(len(f) for f in faces.values())} "
            f"faces (corpus seed {corpus['seed']}, {corpus['identities']} identities), {cfg.data.face_align} crop "
            f"at {cfg.data.face_size} px read at 32 px; {settings.steps} steps, seed {settings.seed}, float64"
        ),
        "corpus": corpus,
        "face_size": cfg.data.face_size,
        "face_align": cfg.data.face_align,
        "settings": {k: v for k, v in asdict(settings).items() if k != "weights"},
        "faces_sha256": faces_sha256(faces),
        "torch": torch.__version__,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: save_probe(tmp, probe, codec, about))
    print(f"face probe: {out} ({out.stat().st_size / 1024:.0f} KiB); {about['trained_on']}")
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="face_probe")
@one_line_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
