"""Fuzzing of the restricted unpickler behind every NVlabs generator file (lightning_modules.io.legacy): run as a
script by tests/test_unpickler_fuzz.py, in a process of its own under an address-space limit.

    python tests/unpickler_fuzz.py SEED_PICKLE CASES SEED WORKDIR

Each case is the seed pickle (a small NVlabs network pickle) mutated with a seeded random generator: bytes
flipped, cut, spliced or repeated; opcodes inserted that declare huge sizes, reach far into the memo, BUILD
attributes onto containers, or call the allowed globals with wrong arguments; nesting thousands deep; globals
of other modules; or random bytes. `load_pretrained` must end within the time limit, either with a generator
or with a ValueError that names the file. One JSON line per case that does not: its number, what happened,
and the message.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import random
import resource
import signal
import struct
import sys
import time
from pathlib import Path

SECONDS = 5  # per case
HEADROOM = 2 << 30  # address space a case may take beyond what the process holds after its imports

OPCODES = [
    pickle.BINBYTES8 + struct.pack("<Q", 1 << 40),  # 1 TiB of bytes declared
    pickle.BINUNICODE8 + struct.pack("<Q", 1 << 40),
    pickle.BINBYTES + struct.pack("<I", 0xFFFFFFFF),
    pickle.LONG_BINGET + struct.pack("<I", 0xFFFFFFF0),  # far beyond the memo
    pickle.BINGET + b"\xff",
    pickle.LONG4 + struct.pack("<i", 1 << 30),  # a 2^33-bit integer declared
    pickle.FRAME + struct.pack("<Q", 1 << 50),
    pickle.BUILD,
    pickle.REDUCE,
    pickle.SETITEMS,
    pickle.APPENDS,
    pickle.POP_MARK,
    pickle.STOP,
    pickle.EMPTY_DICT + pickle.SHORT_BINUNICODE + b"\x09__class__" + pickle.NONE + pickle.SETITEM,
    pickle.NONE
    + pickle.EMPTY_DICT
    + pickle.SHORT_BINUNICODE
    + b"\x09__class__"
    + pickle.NONE
    + pickle.SETITEM
    + pickle.TUPLE2
    + pickle.BUILD,  # (None, {"__class__": None}) as slot state
    pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE,
    pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n",
    pickle.GLOBAL + b"torch.storage\n_load_from_bytes\n",
    pickle.GLOBAL + b"numpy\ndtype\n",
    pickle.GLOBAL + b"numpy._core.multiarray\nscalar\n",
    pickle.GLOBAL + b"torch\nfloat32\n",
    pickle.GLOBAL + b"os\nsystem\n",
    pickle.GLOBAL + b"builtins\neval\n",
    pickle.GLOBAL + b"training.networks\nGenerator\n",
    pickle.GLOBAL + b"torch_utils.persistence\n_reconstruct_persistent_obj\n",
    pickle.BININT + struct.pack("<i", -1),
    pickle.BININT + struct.pack("<i", 1 << 30),
    pickle.BINFLOAT + struct.pack(">d", float("nan")),
    pickle.MARK * 64,
    pickle.EMPTY_LIST + pickle.MARK + pickle.NONE * 8 + pickle.APPENDS,
    pickle.PERSID + b"0\n",
    pickle.EXT4 + struct.pack("<i", 7),
    pickle.INST + b"collections\nOrderedDict\n",
    pickle.OBJ,
    pickle.NEWOBJ,
    pickle.NEWOBJ_EX,
    pickle.MEMOIZE * 4,
    pickle.DUP * 4,
]


def mutate(data: bytes, opcodes: list[int], rng: random.Random) -> bytes:
    """One mutation of `data`; `opcodes` are the offsets of its opcodes, where half the byte edits land (the rest
    land anywhere, mostly in tensor bytes)."""

    def where(length: int) -> int:
        return rng.choice(opcodes) if rng.random() < 0.5 else rng.randrange(length)

    kind = rng.randrange(8)
    if kind == 0:  # flip bytes
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = where(len(buf))
            buf[at + rng.randrange(2) if at + 1 < len(buf) else at] = rng.randrange(256)
        return bytes(buf)
    if kind == 1:  # cut
        return data[: where(len(data))]
    if kind == 2:  # insert opcodes
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = where(len(buf))
            buf[at:at] = rng.choice(OPCODES)
        return bytes(buf)
    if kind == 3:  # splice: a piece moved elsewhere
        a, b = sorted(rng.sample(range(len(data)), 2))
        at = rng.randrange(len(data))
        return data[:at] + data[a:b] + data[at:]
    if kind == 4:  # repeat a piece many times
        a = rng.randrange(len(data) - 16)
        return data[:a] + data[a : a + rng.randint(1, 16)] * rng.randint(2, 5000) + data[a:]
    if kind == 5:  # deep nesting before the real content
        depth = rng.choice([100, 10_000, 100_000])
        opener = rng.choice([pickle.EMPTY_LIST + pickle.MARK, pickle.MARK, pickle.EMPTY_DICT])
        return pickle.PROTO + b"\x04" + opener * depth + data[2:]
    if kind == 6:  # a global of another module in place of an allowed one
        modules = [b"os\nsystem\n", b"subprocess\nPopen\n", b"builtins\ngetattr\n", b"torch\nload\n"]
        return data.replace(b"torch._utils\n", rng.choice(modules)[: -len(b"\n")] + b"\n", 1)
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 512)))  # random bytes


class Timeout(Exception):  # raised by the alarm inside the case
    pass


def main(seed_file: str, cases: int, seed: int, workdir: str) -> int:
    from lightning_modules.io.legacy import load_pretrained  # imported before the limit: torch maps much at import

    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, resource.RLIM_INFINITY))

    def alarm(*_):
        raise Timeout(f"not finished within {SECONDS} s")

    signal.signal(signal.SIGALRM, alarm)
    base = Path(seed_file).read_bytes()
    opcodes = [pos for _, _, pos in pickletools.genops(base)]
    rng = random.Random(seed)
    failures = 0
    for case in range(cases):
        path = Path(workdir) / f"case{case:05d}.pkl"
        path.write_bytes(mutate(base, opcodes, rng))
        start = time.perf_counter()
        signal.alarm(SECONDS)
        try:
            load_pretrained(path, impl="torch")
            outcome = None  # still a generator: fine
        except ValueError as err:
            outcome = None if str(path) in str(err) else f"ValueError not naming the file: {err}"
        except Exception as err:  # every other ending is a finding (MemoryError and the alarm's Timeout too)
            outcome = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        finally:
            signal.alarm(0)
        if outcome is not None:
            failures += 1
            print(json.dumps({"case": case, "seconds": round(time.perf_counter() - start, 2), "outcome": outcome}))
        path.unlink()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
