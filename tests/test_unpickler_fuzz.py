"""The restricted unpickler under seeded random and mutated NVlabs pickles (tests/unpickler_fuzz.py): each case ends
within 5 s, under a 2 GiB address-space allowance, with a generator or a ValueError naming the file."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Persisted

from lightning_modules.legacy import load_pretrained
from lightning_modules.stylegan2 import Generator

HARNESS = Path(__file__).with_name("unpickler_fuzz.py")


@pytest.fixture
def seed_pickle(tmp_path, nvlabs_modules):
    """A small NVlabs network pickle (G, G_ema, EasyDict kwargs), as NVlabs' persistence writes one."""
    torch.manual_seed(0)
    kwargs = dict(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 64, "channel_max": 8},
    )
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=64, channel_max=8, impl="torch")
    path = tmp_path / "seed.pkl"
    with open(path, "wb") as f:
        networks = {"G": Persisted(G, kwargs), "D": None, "G_ema": Persisted(G, kwargs), "augment_pipe": None}
        pickle.dump({**networks, "training_set_kwargs": nvlabs_modules.EasyDict(resolution=16)}, f)
    load_pretrained(path, impl="torch")  # the unmutated seed loads: the cases start from a real pickle
    return path


def fuzz(seed_pickle: Path, cases: int, seed: int, tmp_path: Path) -> None:
    work = tmp_path / "cases"
    work.mkdir()
    command = [sys.executable, "-W", "ignore", str(HARNESS), str(seed_pickle), str(cases), str(seed), str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=HARNESS.parents[1])
    findings = done.stdout.strip().splitlines()
    assert done.returncode == 0 and not findings, f"{len(findings)} case(s): {findings[:5]} {done.stderr[-2000:]}"


def test_mutated_pickles_end_in_a_named_error(seed_pickle, tmp_path):
    fuzz(seed_pickle, 2000, 0, tmp_path)


@pytest.mark.slow
def test_mutated_pickles_end_in_a_named_error_at_scale(seed_pickle, tmp_path):
    fuzz(seed_pickle, 50_000, 1, tmp_path)
