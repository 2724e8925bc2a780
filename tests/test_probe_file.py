"""The shipped face probe (lightning_modules/weights/face_probe_32.safetensors): its file format, what is refused,
which probe an evaluation picks, and that two evaluations of one checkpoint agree under 1 and 2 threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import probe_settings
from safetensors.torch import load_file, save_file

from datamodules.synthetic.traits import ATTRIBUTE_KINDS
from lightning_modules import weights
from lightning_modules.metrics.probe import (
    SHIPPED_PROBE,
    load_probe_file,
    probe_for,
    save_probe,
    train_probe,
)

ROOT = Path(__file__).resolve().parents[1]


def shipped():
    return load_probe_file(weights.shipped_file(SHIPPED_PROBE))


def test_the_shipped_probe_loads_and_reads_the_corpus_attributes():
    probe, codec, about = shipped()
    assert codec.kinds == dict(ATTRIBUTE_KINDS) and about["face_align"] == "arcface"
    assert about["corpus"] == {"identities": 120, "seed": 0} and about["settings"]["steps"] == 300
    assert probe.identity.weight.dtype == torch.float64 and probe.identity.out_features == 75
    faces = torch.rand(4, 3, 64, 64) * 2 - 1
    emb, heads = probe.predict(faces)
    assert emb.shape == (4, 64) and torch.isfinite(emb).all() and set(heads) == set(ATTRIBUTE_KINDS)


def small_probe():
    faces = {f"id{i}": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8) for i in range(4)}
    attributes = {n: {"sex": "mf"[i % 2], "skin_tone": i / 4} for i, n in enumerate(sorted(faces))}
    return train_probe(faces, attributes, {"sex": "categorical", "skin_tone": "continuous"}, steps=5)


def test_a_saved_probe_reads_back_the_same(tmp_path):
    probe, codec = small_probe()
    save_probe(tmp_path / "p.safetensors", probe, codec, {"trained_on": "four noise identities"})
    again, codec2, about = load_probe_file(tmp_path / "p.safetensors")
    faces = torch.rand(5, 3, 32, 32) * 2 - 1
    (a, ha), (b, hb) = probe.predict(faces), again.predict(faces)
    assert torch.equal(a, b) and all(torch.equal(ha[k], hb[k]) for k in ha)
    assert codec2 == codec and about == {"trained_on": "four noise identities"}
    assert again.continuous == probe.continuous


def tampered(tmp_path, edit_tensors=None, edit_header=None):
    probe, codec = small_probe()
    good = tmp_path / "good.safetensors"
    save_probe(good, probe, codec, {})
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = json.loads(f.metadata()["voice2face"])
    tensors = load_file(str(good))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"voice2face": json.dumps(header)})
    return bad


@pytest.mark.parametrize(
    "edit_tensors, edit_header, words",
    [
        (lambda t: t.update({"trunk.0.weight": t["trunk.0.weight"] * float("nan")}), None, "non-finite"),
        (lambda t: t.pop("trunk.6.weight"), None, "missing tensors"),
        (lambda t: t.update({"trunk.0.weight": torch.zeros(3, 3)}), None, r"\[3, 3\] \(needs \[16, 3, 3, 3\]\)"),
        (lambda t: t.pop("identity.weight"), None, "identity.weight"),
        (None, lambda h: h.update({"format": "something-else/9"}), "format"),
        (None, lambda h: h.update({"width": "16"}), "width"),
        (None, lambda h: h.update({"width": 10**9}), "width"),
        (None, lambda h: h.pop("codec"), "codec"),
        (None, lambda h: h["codec"].update({"kinds": 3}), "header"),
    ],
)
@pytest.mark.integration
def test_a_damaged_probe_file_is_refused_by_name(tmp_path, edit_tensors, edit_header, words):
    bad = tampered(tmp_path, edit_tensors, edit_header)
    with pytest.raises(ValueError, match=words) as err:
        load_probe_file(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"\xff" * 64, (2**40).to_bytes(8, "little") + b"{}"])
def test_a_file_that_is_no_safetensors_is_refused_by_name(tmp_path, content):
    path = tmp_path / "probe.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a usable face probe file") as err:
        load_probe_file(path)
    assert str(path) in str(err.value)


class Corpus:
    """The datamodule surface probe_for reads."""

    def __init__(self, kinds, align="arcface"):
        g = torch.Generator().manual_seed(0)
        self.train = {f"id{i}": torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8) for i in range(3)}
        self.attribute_kinds = kinds
        self.attributes = {n: {k: ("f" if v == "categorical" else 0.5) for k, v in kinds.items()} for n in self.train}
        self.hparams = {"face_align": align}

    def faces(self, split):
        return self.train


@pytest.mark.integration
def test_an_evaluation_picks_the_shipped_probe_only_where_it_fits():
    digest = weights.sha256(weights.shipped_file(SHIPPED_PROBE))[:16]
    _, _, which = probe_for(Corpus(dict(ATTRIBUTE_KINDS)), probe_settings())
    assert which.startswith(f"face_probe_32.safetensors sha256:{digest}")
    for other in (Corpus({"sex": "categorical"}), Corpus(dict(ATTRIBUTE_KINDS), align="ffhq"), Corpus({})):
        probe, _, which = probe_for(
            other, probe_settings(steps=3)
        )  # real data / another crop: retrained on its own faces
        assert which.startswith("retrained on this run's train split (3 identities")
        assert probe.identity.out_features == 3
    _, _, which = probe_for(Corpus(dict(ATTRIBUTE_KINDS)), probe_settings(weights="retrain", steps=3))
    assert which.startswith("retrained")
    _, _, which = probe_for(Corpus(dict(ATTRIBUTE_KINDS), align="ffhq"), probe_settings(weights="shipped"))
    assert which.startswith("face_probe_32")  # asked for: the crop is the user's call
    with pytest.raises(ValueError, match="metrics.probe.weights=retrain"):
        probe_for(Corpus({"sex": "categorical"}), probe_settings(weights="shipped"))
    with pytest.raises(ValueError, match="/nonexistent/probe.safetensors: .*No such file"):
        probe_for(Corpus({}), probe_settings(weights="/nonexistent/probe.safetensors"))


def test_a_replaced_shipped_probe_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    copy.mkdir()
    (copy / "face_probe_32.safetensors").write_bytes(b"0" * 100)
    (copy / "SHA256SUMS").write_text(weights.SUMS.read_text())
    monkeypatch.setattr(weights, "FOLDER", copy)
    with pytest.raises(ValueError, match="damaged or was replaced"):
        probe_for(Corpus(dict(ATTRIBUTE_KINDS)), probe_settings())


@pytest.mark.slow
def test_make_face_probe_retrains_the_shipped_probe(tmp_path):
    """`python -m experiments.face_probe` on this machine gives the shipped probe's features (float64: a machine's
    rounding stays near 1e-14) from the very training faces it records."""
    out = tmp_path / "probe.safetensors"
    env = {**os.environ, "VOICE2FACE_ROOT": str(ROOT)}  # the cached default corpus, where there is one
    subprocess.run([sys.executable, "-m", "experiments.face_probe", f"out={out}"], cwd=ROOT, env=env, check=True)
    mine, _, about = load_probe_file(out)
    ours, _, shipped_about = shipped()
    assert about["faces_sha256"] == shipped_about["faces_sha256"]
    faces = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a, b = mine.predict(faces)[0], ours.predict(faces)[0]
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.integration
def test_two_evaluations_with_1_and_2_threads_agree(tmp_path):
    """experiments.evaluate of one checkpoint in two processes, under 1 and 2 threads: every figure equal to 1e-4
    (relative), accuracies exactly, and both measured in the shipped probe."""
    from test_evaluate import smoke_checkpoint

    data = {
        "corpus": {"identities": 24, "seed": 0},
        "corpus_dir": str(tmp_path / "corpus"),
        "cache_dir": str(tmp_path / "cache"),
        "detector": "file",
        "face_size": 16,
        "prepare_workers": 1,
        "eval_min_frames": 200,
    }
    ckpt = smoke_checkpoint(tmp_path / "last.ckpt", data)
    results = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "experiments.evaluate", f"ckpt={ckpt}", f"out={out}", "device=cpu"]
        command += ["metrics.ppl.enabled=false", "metrics.fid.enabled=false"]  # no Inception / VGG weights here
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        results[threads] = json.loads((out / "metrics_test.json").read_text())
    one, two = results[1], results[2]
    assert one["_probe"] == two["_probe"] and one["_probe"].startswith("face_probe_32.safetensors")
    numbers = {k for k, v in one.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    assert numbers == {k for k, v in two.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    assert {"fd_probe", "fd_probe/real", "attr/sex", "attr/skin_tone"} <= numbers
    for key in sorted(numbers):
        if "sex" in key or "accuracy" in key or "recall" in key or key.endswith("/n"):
            assert one[key] == two[key], key
        else:
            assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-9), key


def test_training_a_probe_leaves_the_runs_random_stream_alone():
    """train_probe seeded torch's global generator: the first in-training evaluation reset the GAN's random stream
    to seed 0 mid-run (a run's draws after it depended on whether its probe was retrained)."""
    faces = {f"id{i}": torch.full((2, 3, 32, 32), 40 * i, dtype=torch.uint8) for i in range(3)}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_probe(faces, steps=3)
    assert torch.equal(torch.rand(3), expected)
