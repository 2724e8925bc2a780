"""One training run in its own folder, as the multi-run drivers (experiments.recipe, experiments.sweep) start it:
`python -m experiments.run <overrides>` in a subprocess, its output appended to `<folder>.log`.

A folder that already holds metrics_<split>.json is finished and not trained again (delete it to redo it); one
that holds a last.ckpt was interrupted and is resumed from it (exact), since a fresh run into it is refused.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def train_in(folder: Path, overrides: list[str], split: str = "test") -> Path:
    folder = Path(folder)
    if (folder / f"metrics_{split}.json").is_file():
        log.info("%s: already trained", folder)
        return folder
    cmd = [sys.executable, "-m", "experiments.run", *overrides, f"hydra.run.dir={folder}"]
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        cmd.append(f"ckpt_path={last}")
    log.info("%s: %s", folder, " ".join(cmd[2:]))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".log"), "a") as stream:  # an interrupted attempt's log stays above
        subprocess.run(cmd, check=True, stdout=stream, stderr=subprocess.STDOUT)
    return folder
