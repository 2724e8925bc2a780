"""litdata streaming: an export of the prepared shards, read from a folder, through litdata's remote path
(`local:`), and from an S3-compatible object store (moto's server), gives the same data as the local shards."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import pytest
import torch

from datamodules.files import DataError
from datamodules.streaming import read_stream_meta
from datamodules.voxvgg import VoxVGGDataModule

IDENTITIES = 12


def datamodule(corpus: Path, cache: Path, **kw) -> VoxVGGDataModule:
    base = dict(
        corpus={"identities": IDENTITIES, "seed": 0},
        corpus_dir=str(corpus),
        cache_dir=str(cache),
        detector="file",
        batch_size=8,
        eval_batch_size=4,
        prepare_workers=1,
    )
    return VoxVGGDataModule(**{**base, **kw})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The shard datamodule and a local export of it (made by prepare_data with `stream` set)."""
    tmp = tmp_path_factory.mktemp("stream")
    local = datamodule(tmp / "corpus", tmp / "cache")
    local.prepare_data()
    exported = datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp / "export"))
    exported.prepare_data()
    return local, tmp


def assert_same_data(local: VoxVGGDataModule, streamed: VoxVGGDataModule):
    for split in ("train", "val", "test"):
        assert streamed.identities(split) == local.identities(split)
    for split in ("val", "test"):  # whole utterances in the same order, the same fixed face
        a = list(getattr(local, f"{split}_dataloader")())
        b = list(getattr(streamed, f"{split}_dataloader")())
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    fa, fb = local.faces("train"), streamed.faces("train")
    assert fa.keys() == fb.keys() and all(torch.equal(fa[n], fb[n]) for n in fa)
    assert streamed.attributes == local.attributes and streamed.attribute_kinds == local.attribute_kinds


@pytest.mark.integration
def test_export_in_a_folder_streams_the_same_data(shards):
    local, tmp = shards
    streamed = datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp / "export"))
    streamed.prepare_data()  # already exported: nothing to do
    assert_same_data(local, streamed)
    meta = read_stream_meta(str(tmp / "export"))
    assert meta["clips"]["train"] == len(local.source.sets["train"]) and meta["source"] == local.source.folder().name


def test_train_items_pair_a_window_of_the_clip_with_a_face_of_the_same_identity(shards):
    local, tmp = shards
    streamed = datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp / "export"), crop_frames=(50, 120))
    streamed.setup()
    ds, names = streamed.source.sets["train"], streamed.identities("train")
    shard_faces = local.faces("train")
    for index in range(len(ds)):
        feats, face, label, _ = ds[index]
        shard = local.source.sets["train"].shard(names[label])
        assert any(torch.equal(face, f) for f in shard_faces[names[label]])
        clip = shard.feats.float()  # the window is a contiguous run of some clip of the identity
        starts = [s for s in range(clip.shape[1] - feats.shape[1] + 1) if torch.equal(clip[:, s], feats[:, 0])]
        assert any(torch.equal(clip[:, s : s + feats.shape[1]], feats) for s in starts)
        assert feats.shape[1] <= 120
    loader = streamed.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == len(ds) // 8
    for b in batches:
        assert b["audio"].shape[1:] == (64, b["audio_lengths"][0]) and 50 <= int(b["audio_lengths"][0]) <= 120
        assert b["face"].shape == (8, 3, 64, 64) and b["face"].abs().max() <= 1


def test_epochs_reshuffle_and_replay_the_same_for_the_same_seed(shards):
    _, tmp = shards

    def epochs(seed):
        torch.manual_seed(seed)
        dm = datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp / "export"))
        loader = dm.train_dataloader()
        return [[b["label"].tolist() for b in loader] for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again
    assert first[0] != first[1] and first != other


def test_stream_only_reads_without_the_raw_data(shards):
    """A cluster node with only the export (no corpus, no shards) trains from it."""
    local, tmp = shards
    streamed = VoxVGGDataModule(
        stream=str(tmp / "export"), cache_dir=str(tmp / "elsewhere"), detector="file", batch_size=8, eval_batch_size=4
    )
    streamed.prepare_data()
    assert_same_data(local, streamed)


def test_litdata_remote_path_copies_chunks_to_the_cache(shards):
    """`local:` runs litdata's remote code path (download into the chunk cache) without a network."""
    local, tmp = shards
    cache = tmp / "chunk_cache"
    streamed = VoxVGGDataModule(
        stream=f"local:{tmp / 'export'}", stream_cache_dir=str(cache), detector="file", batch_size=8, eval_batch_size=4
    )
    assert_same_data(local, streamed)
    assert any(cache.rglob("chunk-*.bin"))


def test_bad_streams_name_the_url_and_the_fix(shards, tmp_path):
    local, tmp = shards
    with pytest.raises(DataError, match=f"{tmp_path / 'nothing'}: no streaming export found"):
        VoxVGGDataModule(stream=str(tmp_path / "nothing"), detector="file").setup()
    with pytest.raises(DataError, match="features.*match or export again"):
        VoxVGGDataModule(stream=str(tmp / "export"), detector="file", features={"kind": "mfcc"}).setup()
    other = datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp / "export"), face_size=32)
    before = sorted(p.stat().st_mtime_ns for p in (tmp / "export").rglob("*") if p.is_file())
    with pytest.raises(DataError, match="holds an export of other data"):
        other.prepare_data()
    assert sorted(p.stat().st_mtime_ns for p in (tmp / "export").rglob("*") if p.is_file()) == before
    with pytest.raises(DataError, match="exactly one of"):
        VoxVGGDataModule(detector="file")


def test_out_of_order_faces_are_caught(shards, tmp_path):
    """A face stream in another order than meta's ranges (e.g. a hand-made export) fails loudly."""
    local, tmp = shards
    bad = tmp_path / "export"
    shutil.copytree(tmp / "export", bad)
    from datamodules.streaming import _face_items, _optimize

    names = local.identities("val")
    jobs = [(str(local.source.folder() / "shards" / f"{n}.pt"), label) for label, n in enumerate(names)][::-1]
    _optimize(_face_items, jobs, str(bad / "faces" / "val"), "64MB", {}, False)
    streamed = VoxVGGDataModule(stream=str(bad), detector="file", eval_batch_size=4)
    with pytest.raises(DataError, match="not in the order meta gives"):
        streamed.faces("val")


# ------------------------------------------------------------------------------------------ object store
@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server on localhost (moto), with a bucket; yields its storage options."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (the dev extra) emulates S3 offline")
    import boto3
    import litdata.streaming.downloader as downloader

    # moto serves plain http; litdata's object-store client refuses http unless allowed (real stores use https).
    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", "true")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="voices")
    yield {"endpoint_url": url}
    server.stop()


@pytest.mark.integration
def test_export_to_and_stream_from_an_object_store(shards, s3, tmp_path):
    local, tmp = shards
    writer = datamodule(tmp / "corpus", tmp / "cache", stream="s3://voices/voxvgg/v1", storage_options=s3)
    writer.prepare_data()  # exports straight to the bucket
    import boto3

    keys = {o["Key"] for o in boto3.client("s3", **s3).list_objects_v2(Bucket="voices")["Contents"]}
    assert "voxvgg/v1/meta/index.json" in keys and "voxvgg/v1/voices/train/index.json" in keys
    streamed = VoxVGGDataModule(
        stream="s3://voices/voxvgg/v1",
        storage_options=s3,
        detector="file",
        stream_cache_dir=str(tmp_path / "chunks"),
        batch_size=8,
        eval_batch_size=4,
    )
    assert_same_data(local, streamed)
    b = next(iter(streamed.train_dataloader()))
    assert b["audio"].shape[:2] == (8, 64)
    with pytest.raises(DataError, match="s3://voices/missing: no streaming export found"):
        VoxVGGDataModule(
            stream="s3://voices/missing", storage_options=s3, detector="file", stream_cache_dir=str(tmp_path / "c2")
        ).setup()


@pytest.mark.integration
def test_export_leaves_the_run_rng_streams_alone(shards, tmp_path):
    """litdata's optimize() reseeds random/numpy/torch in the calling process; an export inside a run must not."""
    import random

    import numpy as np

    local, tmp = shards
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = random.random(), np.random.rand(), torch.rand(())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    datamodule(tmp / "corpus", tmp / "cache", stream=str(tmp_path / "export")).prepare_data()
    assert (random.random(), np.random.rand(), torch.rand(())) == before


@pytest.mark.parametrize(
    "options, words",
    [
        ({"chunk_bytes": "abc"}, r"chunk_bytes='abc' \(--chunk-bytes\): not a size"),  # litdata's, after a dataset
        ({"faces_per_clip": 0}, r"faces_per_clip=0 \(--faces-per-clip\): each training clip needs at least 1"),
        ({"faces_per_clip": -2}, r"faces_per_clip=-2"),  # train clips without a face
    ],
)
def test_bad_export_options_are_refused_before_anything_is_written(tmp_path, options, words):
    from datamodules.streaming import export

    with pytest.raises(ValueError, match=words):
        export(tmp_path / "shards", {"train": ["a"]}, str(tmp_path / "export"), {}, **options)
    assert not (tmp_path / "export").exists()
