"""The restricted unpickler under seeded random and mutated NVlabs pickles (tests/unpickler_fuzz.py): each case ends
within 5 s, under a 2 GiB address-space allowance, with a generator or a ValueError naming the file."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_nvlabs_pickle

from lightning_modules.io.legacy import load_pretrained
from lightning_modules.nets.stylegan2 import Generator

HARNESS = Path(__file__).with_name("unpickler_fuzz.py")


@pytest.fixture
def seed_pickle(tmp_path, nvlabs_modules):
    """A small NVlabs network pickle (G, G_ema, EasyDict kwargs), as NVlabs' persistence writes one."""
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=64, channel_max=8, impl="torch")
    path = tmp_path / "seed.pkl"
    write_nvlabs_pickle(path, G, 64, 8, nvlabs_modules.EasyDict)
    load_pretrained(path, impl="torch")  # the unmutated seed loads: the cases start from a real pickle
    return path


def fuzz(seed_pickle: Path, cases: int, seed: int, tmp_path: Path) -> None:
    work = tmp_path / "cases"
    work.mkdir()
    command = [sys.executable, "-W", "ignore", str(HARNESS), str(seed_pickle), str(cases), str(seed), str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=HARNESS.parents[1])
    findings = done.stdout.strip().splitlines()
    assert done.returncode == 0 and not findings, f"{len(findings)} case(s): {findings[:5]} {done.stderr[-2000:]}"


@pytest.mark.integration
def test_mutated_pickles_end_in_a_named_error(seed_pickle, tmp_path):
    fuzz(seed_pickle, 2000, 0, tmp_path)


@pytest.mark.slow
def test_mutated_pickles_end_in_a_named_error_at_scale(seed_pickle, tmp_path):
    fuzz(seed_pickle, 50_000, 1, tmp_path)


class Reduce:
    """Pickles as a call of `fn(*args)`, as a hostile file can write any call of an allowed global."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def storage(values, typed=True):
    """A storage as NVlabs' pickles hold one: torch.storage._load_from_bytes of torch.save's legacy format."""
    import io

    buf = io.BytesIO()
    tensor = torch.tensor(values, dtype=torch.float32)
    torch.save(tensor.storage() if typed else tensor.untyped_storage(), buf, _use_new_zipfile_serialization=False)
    return Reduce(torch.storage._load_from_bytes, buf.getvalue())


def view(store, size, stride):
    import collections

    return Reduce(torch._utils._rebuild_tensor_v2, store, 0, size, stride, False, collections.OrderedDict())


def build_on_ordered_dict() -> bytes:
    """{"G_ema": OrderedDict()} with a BUILD whose slot state sets the dict's __class__."""
    text = lambda s: pickle.BINUNICODE + len(s).to_bytes(4, "little") + s.encode()  # noqa: E731
    od = pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
    slots = pickle.EMPTY_DICT + text("__class__") + pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.SETITEM
    build = pickle.NONE + slots + pickle.TUPLE2 + pickle.BUILD
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + text("G_ema") + od + build + pickle.SETITEM + pickle.STOP


@pytest.mark.parametrize(
    "content, words",
    [
        (lambda: build_on_ordered_dict(), "not a loadable NVlabs network pickle"),
        (lambda: pickle.PROTO + b"\x04" + pickle.BINBYTES8 + (1 << 40).to_bytes(8, "little") + pickle.STOP, "bytes8"),
        (lambda: pickle.dumps({"G_ema": view(storage([1.0] * 4), (100_000, 100_000), (100_000, 1))}), "reaches past"),
        (lambda: pickle.dumps({"G_ema": view(storage([1.0] * 4), (4,), (-1,))}), "non-negative integers"),
        (lambda: pickle.dumps({"G_ema": view(storage([1.0] * 4, typed=False), (4,), (1,))}), "no torch storage"),
        (lambda: pickle.dumps({"G_ema": Reduce(torch.storage._load_from_bytes, b"\x80\x02K\x07.")}), "no torch"),
    ],
    ids=["build-class-onto-ordereddict", "binbytes8-2^40", "view-1e5x1e5", "negative-stride", "untyped", "bad-record"],
)
def test_each_hostile_pickle_of_the_audit_is_named(tmp_path, content, words):
    """The cases the audit found as tracebacks (or a 1 TiB allocation), each now a ValueError naming the file."""
    path = tmp_path / "hostile.pkl"
    path.write_bytes(content())
    with pytest.raises(ValueError, match=words) as err:
        load_pretrained(path, impl="torch")
    assert str(path) in str(err.value)
