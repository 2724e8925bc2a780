import json
import shutil

import pytest

from datamodules.prepare import main, prepare
from datamodules.voxvgg import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from datamodules.synthetic import ensure_corpus

    return ensure_corpus(tmp_path_factory.mktemp("corpus"), identities=8, seed=0)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_gives_identical_output(tmp_path, corpus):
    full = tmp_path / "full"
    m = prepare(corpus, full, detector="file", workers=1, progress=False)
    assert m["counts"]["identities"] > 0 and m["counts"]["clips"] > 0 and m["counts"]["faces"] > 0
    assert len(m["config_hash"]) == 16
    # An interrupted run: half the shards done, a leftover temporary file, no manifest.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "manifest.json").unlink()
    shards = sorted((part / "shards").glob("*.pt"))
    for s in shards[len(shards) // 2 :]:
        s.unlink()
    (part / "shards" / f".{shards[-1].name}.tmp123").write_bytes(b"half")
    kept = {s: s.stat().st_mtime_ns for s in shards[: len(shards) // 2]}
    prepare(corpus, part, detector="file", workers=2, progress=False)
    assert all(s.stat().st_mtime_ns == t for s, t in kept.items())  # finished shards not redone
    (part / "shards" / f".{shards[-1].name}.tmp123").unlink()  # stray temporaries are never read
    assert _files(part) == _files(full)


def test_other_config_refuses_same_out(tmp_path, corpus):
    prepare(corpus, tmp_path / "o", detector="file", workers=1, progress=False)
    with pytest.raises(DataError, match="another config"):
        prepare(corpus, tmp_path / "o", detector="none", workers=1, progress=False)


def test_cli_and_skips(tmp_path, corpus, capsys):
    root = tmp_path / "raw"
    shutil.copytree(corpus, root)
    wav = next((root / "voxceleb1" / "wav").rglob("*.wav"))
    wav.write_bytes(b"RIFF")  # truncated
    img = next((root / "vggface").rglob("*.jpg"))
    img.write_bytes(b"\xff\xd8 broken")
    main(["--root", str(root), "--out", str(tmp_path / "out"), "--detector", "file", "--workers", "1"])
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["skipped"] == 2
    skipped = dict(map(tuple, json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]))
    assert wav.relative_to(root).as_posix() in skipped and img.relative_to(root).as_posix() in skipped
