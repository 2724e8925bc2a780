"""bench/gpu_check.sh and bench/face_prior_gpu.sh without a device (each must say so and exit 0), and the check's
report on a folder of step outputs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Loaded from its file: putting bench/ on sys.path would let bench/kernels.py shadow the kernels package.
_spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "bench" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the check would run")
@pytest.mark.integration
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "PY": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert "no CUDA device" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert not (tmp_path / "out" / "steps.tsv").exists()  # nothing was attempted


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the prior would train")
def test_face_prior_gpu_without_cuda_says_so_and_trains_nothing(tmp_path):
    env = {**os.environ, "PY": sys.executable}
    env.pop("DEVICE", None)  # DEVICE=cpu is the script's dry run on the CPU
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "face_prior_gpu.sh"), str(tmp_path / "prior"), "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout and not (tmp_path / "prior").exists()


def test_report_names_each_step_result_and_the_tick(tmp_path):
    (tmp_path / "steps.tsv").write_text(
        "pytest_gpu\t0\t41\t75\nkernels\t1\t80\t110\ntrain_step\t124\t100\t100\ntrain_1kimg\t0\t95\t110\n"
    )
    (tmp_path / "pytest_gpu.log").write_text("....\n4 passed, 300 deselected in 40.1s\n")
    (tmp_path / "kernels.md").write_text("| dtype | pass |\n| --- | --- |\n| float32 | fwd |\n")
    (tmp_path / "train_1kimg.log").write_text(
        "kernels.modconv: warning text\nkernels      modulated_conv2d: triton (impl=auto on CUDA)\n"
    )
    (tmp_path / "run" / "csv").mkdir(parents=True)
    (tmp_path / "run" / "csv" / "metrics.csv").write_text(
        "step,perf/img_per_s,perf/sec_per_kimg,perf/peak_alloc_gib\n2,100.0,10.0,1.5\n4,,,\n6,200.0,5.0,1.6\n"
    )
    text = gpu_report.main(tmp_path)
    assert "| pytest_gpu |" in text and "| passed | 41 |" in text
    assert "failed (exit 1)" in text and "timed out at 100 s" in text
    assert "4 passed, 300 deselected" in text
    assert "| float32 | fwd |" in text and "train_step: no table (see train_step.log)" in text
    assert "perf/img_per_s 200" in text and "perf/sec_per_kimg 5" in text and "perf/peak_alloc_gib 1.6" in text
    assert "kernel paths: modulated_conv2d: triton (impl=auto on CUDA)" in text


def test_report_of_an_empty_folder_says_nothing_ran(tmp_path):
    text = gpu_report.main(tmp_path)
    assert text.count("not run") == 4 and "none logged" in text
