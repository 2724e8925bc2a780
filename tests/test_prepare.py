import json
import shutil

import pytest

from datamodules.files import DataError
from datamodules.prepare import main, prepare


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from datamodules.synthetic import ensure_corpus

    return ensure_corpus(tmp_path_factory.mktemp("corpus"), identities=8, seed=0)


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.integration
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


@pytest.mark.slow
def test_kill_9_during_preprocessing_then_rerun_is_identical(tmp_path):
    """The CLI's whole process group is killed with SIGKILL five times, each time a little after a new shard
    lands (so kills hit workers mid-shard too); a final rerun must equal an uninterrupted run byte for byte."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from datamodules.synthetic import ensure_corpus

    corpus = ensure_corpus(tmp_path / "corpus", identities=32, seed=1)  # enough shards for five kills
    root = Path(__file__).resolve().parents[1]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    prepare(corpus, straight, detector="file", workers=2, progress=False)
    cmd = [
        sys.executable,
        "-m",
        "datamodules.prepare",
        "--root",
        str(corpus),
        "--out",
        str(killed),
        "--detector",
        "file",
        "--workers",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng, kills = random.Random(0), 0
    while kills < 5:
        done = len(list((killed / "shards").glob("*.pt")))
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and len(list((killed / "shards").glob("*.pt"))) <= done:
            assert time.monotonic() < deadline, "preprocessing made no progress"
            time.sleep(0.05)
        if proc.poll() is not None:  # finished before it could be killed: nothing left to interrupt
            break
        time.sleep(rng.uniform(0.0, 0.1))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, timeout=600)
    assert kills >= 5, f"only {kills} kills: the corpus has too few shards for this test"
    for p in killed.rglob(".*.tmp*"):
        p.unlink()  # temporaries of killed writers are ignored by readers; the finished output must match
    assert _files(killed) == _files(straight)
    print(f"kills={kills}")


def test_a_replaced_input_redoes_its_shard_only(tmp_path, corpus):
    """The fix the docs give for a skipped file (replace it, rerun) works: its shard is made again, no other."""
    root = tmp_path / "raw"
    shutil.copytree(corpus, root)
    wav = next((root / "voxceleb1" / "wav").rglob("*.wav"))
    good = wav.read_bytes()
    wav.write_bytes(b"RIFF")  # truncated: skipped
    out = tmp_path / "out"
    first = prepare(root, out, detector="file", workers=1, progress=False)
    assert first["counts"]["skipped"] == 1
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.pt")}
    wav.write_bytes(good)
    second = prepare(root, out, detector="file", workers=1, progress=False)
    assert second["counts"]["skipped"] == 0 and second["counts"]["clips"] == first["counts"]["clips"] + 1
    changed = [p.name for p in (out / "shards").glob("*.pt") if p.stat().st_mtime_ns != before[p.name]]
    assert len(changed) == 1


def test_out_made_from_another_root_is_refused(tmp_path, corpus):
    prepare(corpus, tmp_path / "o", detector="file", workers=1, progress=False)
    other = tmp_path / "copy"
    shutil.copytree(corpus, other)
    with pytest.raises(DataError, match="prepared from another root"):
        prepare(other, tmp_path / "o", detector="file", workers=1, progress=False)


def test_symlinked_video_folders_are_followed_once(tmp_path, corpus):
    from datamodules.prepare import walk_files

    speaker = tmp_path / "id1"
    (speaker / "v1").mkdir(parents=True)
    (speaker / "v1" / "1.wav").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2.wav").write_bytes(b"x")
    (speaker / "v2").symlink_to(elsewhere, target_is_directory=True)
    (speaker / "v1" / "up").symlink_to(speaker, target_is_directory=True)  # a loop back up
    assert sorted(p.name for p in walk_files(speaker)) == ["1.wav", "2.wav"]


def test_write_atomic_replaces_a_folder_whole_or_not_at_all(tmp_path):
    """A model folder is written beside the old one and swapped in; a failed write leaves the old one and no
    temporary, and an error that is not a failed write is raised as it is (not reported as a full disk)."""
    from datamodules.files import write_atomic

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.json").write_text("old")

    def folder(tmp, fail=None):
        tmp.mkdir()
        (tmp / "new.json").write_text("new")
        if fail:
            raise fail

    with pytest.raises(RuntimeError, match="^the faces differ$"):
        write_atomic(out, lambda tmp: folder(tmp, RuntimeError("the faces differ")))
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in out.iterdir()] == ["old.json"]
    write_atomic(out, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in out.iterdir()] == ["new.json"]


def test_a_failed_shard_write_names_the_file(tmp_path, monkeypatch):
    from datamodules.files import write_atomic

    def full_disk(path):
        open(path, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    target = tmp_path / "Ann_A.pt"
    with pytest.raises(OSError, match=r"Ann_A.pt: could not be written .* is the disk full"):
        write_atomic(target, full_disk)
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_the_prepared_folder_name_changes_only_with_the_shard_version():
    """The prepared folder's name is the hash of its config. Version 1's hashes are those the code before
    datamodules/shards.py gave (its prepare.py built the same dict); version 2 (faces.warp reads the window it
    samples, shrinks by an integer factor first) changed the face bytes, so its folders are made anew on purpose.
    Any other change of these hashes would orphan every prepared folder."""
    from datamodules import shards
    from datamodules.shards import SHARD_VERSION, config_hash, preprocessing_config

    assert SHARD_VERSION == "2"
    assert config_hash(preprocessing_config("file", 64, {"kind": "logmel"}, {})) == "4dbef99b5a059b58"
    assert config_hash({**preprocessing_config("mtcnn", 64, None, None), "root": "/data/vox"}) == "c70045111b84e642"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "SHARD_VERSION", "1")
        assert config_hash(preprocessing_config("file", 64, {"kind": "logmel"}, {})) == "08512f9ae299d080"


def test_each_face_align_has_a_config_hash_of_its_own():
    """FFHQ crops never share a folder (or a stream export) with ArcFace crops; ArcFace's config is the one of before
    the key, so the folders prepared then keep their names (the hashes above)."""
    from datamodules.shards import config_hash, prepared_folder, preprocessing_config

    arcface = preprocessing_config("file", 256, {"kind": "logmel"}, {})
    assert "face_align" not in arcface
    assert preprocessing_config("file", 256, {"kind": "logmel"}, {}, "arcface") == arcface
    ffhq = preprocessing_config("file", 256, {"kind": "logmel"}, {}, "ffhq")
    assert ffhq["face_align"] == "ffhq" and config_hash(ffhq) != config_hash(arcface)
    assert prepared_folder("c", ffhq, "/data/vox") != prepared_folder("c", arcface, "/data/vox")


def test_data_face_align_reaches_the_preprocessing_config(compose_cfg):
    from hydra.utils import instantiate

    from datamodules.shards import face_align_of
    from experiments.schema import check_config

    for align in ("arcface", "ffhq"):
        cfg = compose_cfg("data=voxvgg", f"data.face_align={align}")
        check_config(cfg)
        assert face_align_of(instantiate(cfg.data).source.config) == align
    with pytest.raises(ValueError, match="data.face_align: 'dlib' is not one of"):
        check_config(compose_cfg("data.face_align=dlib"))


def test_ffhq_crops_at_256_prepare(tmp_path, corpus, capsys):
    """--face-size 256 --face-align ffhq: 256 px FFHQ crops in the shards, the alignment in config.json, and an
    ArcFace run refused in that folder."""
    from datamodules.faces import FaceAligner
    from datamodules.shards import read_shard, shard_file

    out = tmp_path / "o"
    settings = ["--detector", "file", "--face-size", "256", "--face-align", "ffhq", "--workers", "1"]
    main(["--root", str(corpus), "--out", str(out), *settings])
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 0
    assert json.loads((out / "config.json").read_text())["config"]["face_align"] == "ffhq"
    name = json.loads((out / "manifest.json").read_text())["usable"][0]
    shard = read_shard(shard_file(out, name))
    assert shard.faces.shape[1:] == (3, 256, 256)
    aligner = FaceAligner("file", 256, corpus / "landmarks.csv", align="ffhq")
    key = shard.images[0].removeprefix("vggface/")
    assert (shard.faces[0].numpy() == aligner(corpus / shard.images[0], key)).all()
    with pytest.raises(DataError, match="another config"):
        prepare(corpus, out, detector="file", face_size=256, workers=1, progress=False)


@pytest.mark.parametrize("size", ["0", "-8", "33"])
def test_a_face_size_the_networks_cannot_build_is_refused_before_any_work(tmp_path, capsys, size):
    """0 and -8 failed after the first identities with "Singular matrix"; 33 prepared shards no run can use."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--face-size", size])
    assert exit_info.value.code == 2
    assert f"argument --face-size: invalid choice: {size} (choose from 4, 8, 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, words",
    [
        ({"manifest.json": '{"faces": {}}'}, r"holds files \(manifest.json\) but is not a prepared folder"),
        ({"config.json": "not json"}, r"config.json: not the config.json of a prepared folder"),
        ({"config.json": '{"name": "another program"}'}, r"config.json: not the config.json of a prepared folder"),
    ],
)
def test_an_out_folder_of_something_else_is_left_alone(tmp_path, content, words):
    """A generate run's folder as --out: its manifest.json was replaced; another program's config.json was a
    KeyError or a JSON error naming no file."""
    from datamodules.shards import claim

    out = tmp_path / "out"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    with pytest.raises(DataError, match=words):
        claim(out, {"features": "logmel"}, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(content)  # no shards/ made in it
    assert all((out / name).read_text() == text for name, text in content.items())


def test_a_killed_claim_leaves_a_folder_that_is_claimed_again(tmp_path):
    from datamodules.shards import claim

    (tmp_path / "out" / "shards").mkdir(parents=True)  # killed between the two first steps
    assert claim(tmp_path / "out", {"features": "logmel"}, tmp_path) == claim(
        tmp_path / "out", {"features": "logmel"}, tmp_path
    )
