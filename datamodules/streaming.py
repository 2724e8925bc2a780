"""Prepared shards -> litdata's chunked format, streamed back from a local folder or an object store.

    python -m datamodules.streaming --prepared DIR --root DIR --out DIR|s3://bucket/prefix [--chunk-bytes 64MB]
                                    [--endpoint-url URL]

Layout under `out` (each a litdata dataset: index.json + chunk files; `meta` is written last, so an export
exists only when complete):
  voices/<split>/  one item per clip, identity by identity: {label, clip, feats float16 [F, T], faces uint8
                   [k, 3, S, S]}: k faces of the same identity to pair the clip with (train), or the one fixed
                   face of the evaluation rule (val/test: face clip mod K, as the shard reader does)
  faces/<split>/   one item per aligned face, identity by identity: {label, face uint8 [3, S, S]}, read in order
                   for the metrics' real-face sets
  meta/            one item: the JSON of the split (names per split, label = index), the face index range of
                   each label, clip counts, the preprocessing config and, for the embedded corpus, attributes.

Why faces travel with each clip: training pairs a clip with an independent face of the same identity. Fetching
that face from a face table by random index costs one object-store request per sample (about 150/s against a
local S3 server), while reading the clip stream in order downloads whole chunks. Clip c of an identity with K
faces carries faces (c·k + m) mod K, m < k, so the clips of an identity cover its faces when clips·k ≥ K; every
epoch draws one of the k anew. Randomness (crop window, face, batch crop length) is a function of (seed, epoch,
sample index), not of the global RNG, so a resumed run sees the same batches with any number of workers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize

from datamodules.cli_errors import one_line_errors
from datamodules.files import DataError
from datamodules.items import eval_face_index, item_seed, train_item
from datamodules.meta import identity_split, read_attributes_if_any
from datamodules.pipeline import VoicePipeline
from datamodules.shards import read_config, read_manifest, read_shard

STREAM_VERSION = "1"  # bump when the item layout changes
CHUNK_SIZE = re.compile(r"\s*\d+(\.\d+)?\s*([kmgt]b?|b)\s*", re.IGNORECASE)  # what litdata's optimize() reads
SPLITS = ("train", "val", "test")


def join(url: str, *parts: str) -> str:
    """Child path of a folder or an object-store URL (s3://bucket/prefix)."""
    return "/".join([str(url).rstrip("/"), *parts])


def is_remote(url: str) -> bool:
    return "://" in str(url) or str(url).startswith("local:")


# The item functions run in a forked worker: copies go through numpy, because a torch op that enters OpenMP in
# a child forked from a parent that already used the OpenMP pool can hang.
def _voice_items(job: tuple[str, int, int]):
    path, label, k = job  # k = 0: the evaluation face only
    s = read_shard(Path(path))
    feats, offsets, faces = s.feats.numpy(), s.offsets.tolist(), s.faces.numpy()
    K = len(faces)
    for c in range(s.num_clips):
        picks = [(c * k + m) % K for m in range(k)] if k else [eval_face_index(c, K)]
        yield {
            "label": label,
            "clip": c,
            "feats": torch.from_numpy(feats[:, offsets[c] : offsets[c + 1]].copy()),
            "faces": torch.from_numpy(faces[picks].copy()),
        }


def _face_items(job: tuple[str, int]):
    path, label = job
    for face in read_shard(Path(path)).faces.numpy():
        yield {"label": label, "face": torch.from_numpy(face.copy())}


def _meta_item(text: str) -> dict:
    return {"json": text}


def export(
    shard_dir,  # prepared shards: <name>.pt (datamodules.prepare)
    split: dict[str, list[str]],  # names per split; a label is the index in its sorted list
    out: str,  # folder or object-store URL
    config: dict,  # the preprocessing config (features, face_size, ...), checked by readers
    attributes: dict | None = None,  # per-identity attributes (embedded corpus)
    chunk_bytes: str = "64MB",
    faces_per_clip: int = 8,  # training faces stored with each clip (storage grows by k·3·S² bytes per clip)
    storage_options: dict | None = None,  # e.g. {"endpoint_url": ...} for S3-compatible stores
    progress: bool = False,
    source: str | None = None,  # what the shards were made from (the prepared folder's hash), kept in meta
) -> dict:
    """Write the streaming datasets and return the meta record; an interrupted export is redone whole."""
    check_export_options(chunk_bytes, faces_per_clip)
    shard_dir = Path(shard_dir)
    missing = [n for names in split.values() for n in names if not (shard_dir / f"{n}.pt").is_file()]
    if missing:
        raise DataError(f"{shard_dir}: no shards for {missing[:5]}; run datamodules.prepare first")
    meta = {
        "version": STREAM_VERSION,
        "config": config,
        "source": source,
        "faces_per_clip": faces_per_clip,
        "split": {},
        "face_start": {},
        "clips": {},
    }
    options = dict(storage_options or {})
    for name in SPLITS:
        names = sorted(split.get(name, []))
        paths = [str(shard_dir / f"{n}.pt") for n in names]
        counts = [(len(s.faces), s.num_clips) for s in (read_shard(Path(p)) for p in paths)]
        meta["split"][name] = names
        meta["face_start"][name] = [0, *torch.tensor([f for f, _ in counts], dtype=torch.long).cumsum(0).tolist()]
        meta["clips"][name] = sum(c for _, c in counts)
        if names:
            k = faces_per_clip if name == "train" else 0
            _optimize(
                _voice_items,
                [(p, label, k) for label, p in enumerate(paths)],
                join(out, "voices", name),
                chunk_bytes,
                options,
                progress,
            )
            _optimize(
                _face_items,
                list(zip(paths, range(len(paths)))),
                join(out, "faces", name),
                chunk_bytes,
                options,
                progress,
            )
    meta["attributes"] = attributes
    _optimize(_meta_item, [json.dumps(meta, sort_keys=True)], join(out, "meta"), chunk_bytes, options, progress)
    return meta


def check_export_options(chunk_bytes, faces_per_clip) -> None:
    """Before anything is written: litdata's error for a bad chunk size named no option and came after the first
    dataset; a train clip with k < 1 faces carried one fixed face (k = 0) or none (k < 0)."""
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0) and not (
        isinstance(chunk_bytes, str) and CHUNK_SIZE.fullmatch(chunk_bytes)
    ):
        raise ValueError(f"chunk_bytes={chunk_bytes!r} (--chunk-bytes): not a size; write it as 64MB, 512KB or 1GB")
    if not isinstance(faces_per_clip, int) or faces_per_clip < 1:
        raise ValueError(
            f"faces_per_clip={faces_per_clip!r} (--faces-per-clip): each training clip needs at least 1 face to "
            "draw from (8 is the default)"
        )


def _optimize(fn, inputs, output_dir, chunk_bytes, storage_options, progress) -> None:
    # One worker in input order: the face ranges in meta assume identity-by-identity order. Fork on Linux: a
    # spawned worker re-imports torch (seconds per dataset), and optimize() sets the start method process-wide.
    # optimize() also reseeds random, numpy and torch in this process: keep the run's RNG streams as they were.
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        _optimize_ordered(fn, inputs, output_dir, chunk_bytes, storage_options, progress)
    random.setstate(py_state)
    np.random.set_state(np_state)


def _optimize_ordered(fn, inputs, output_dir, chunk_bytes, storage_options, progress) -> None:
    optimize(
        fn=fn,
        inputs=inputs,
        output_dir=output_dir if is_remote(output_dir) else str(Path(output_dir).resolve()),
        chunk_bytes=chunk_bytes,
        num_workers=1,
        reorder_files=False,
        keep_data_ordered=True,
        mode="overwrite",
        storage_options=storage_options,
        verbose=progress,
        start_method="fork" if sys.platform == "linux" else None,
    )


SAFE_FORMATS = frozenset({"int", "str", "tensor"})  # what export() writes; litdata decodes e.g. "pickle" by
# pickle.loads, so an export handed to us with such items would run code as soon as one item is read


def check_formats(ds: StreamingDataset, url: str) -> None:
    """Refuse a litdata dataset (its index.json is local once it is constructed) whose items could decode to
    anything but ints, strings and tensors; nothing of it has been decoded yet."""
    index = Path(ds.input_dir.path) / "index.json"
    try:
        record = json.loads(index.read_text())
        formats, loader = set(record["config"]["data_format"]), record["config"].get("item_loader")
        formats |= {f for chunk in record["chunks"] for f in chunk.get("data_format", [])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{url}: unreadable litdata index {index} ({type(err).__name__}: {err}); export again") from err
    unsafe = sorted(formats - SAFE_FORMATS)
    if unsafe or loader != "PyTreeLoader":
        raise DataError(
            f"{url}: items of format {unsafe or [loader]} are refused (only {sorted(SAFE_FORMATS)} "
            "through PyTreeLoader, as datamodules.streaming writes them); decoding them could run code. "
            "Export the prepared shards again with python -m datamodules.streaming"
        )


def open_stream(url: str, **kwargs) -> StreamingDataset:
    """A StreamingDataset of `url` after check_formats."""
    ds = StreamingDataset(url, **kwargs)
    check_formats(ds, url)
    return ds


def read_stream_meta(url: str, cache_dir=None, storage_options: dict | None = None) -> dict:
    """The meta record of an export; DataError naming the URL when it is missing or from another version."""
    try:
        ds = StreamingDataset(join(url, "meta"), cache_dir=_cache(cache_dir, "meta"), storage_options=storage_options)
    except Exception as err:  # litdata and the store clients raise many kinds; all mean no readable export
        raise DataError(
            f"{url}: no streaming export found ({type(err).__name__}: {err}); run python -m datamodules.streaming "
            "--prepared DIR --root DIR --out URL, or set data.stream to an exported folder or URL"
        ) from err
    check_formats(ds, join(url, "meta"))
    try:
        meta = json.loads(ds[0]["json"])
    except Exception as err:
        raise DataError(
            f"{url}: the export's meta record is unreadable ({type(err).__name__}: {err}); export again"
        ) from err
    if meta.get("version") != STREAM_VERSION:
        raise DataError(
            f"{url}: exported with stream version {meta.get('version')}, this code reads {STREAM_VERSION}; "
            "export again from the prepared shards"
        )
    return meta


def _cache(cache_dir, *parts) -> str | None:
    return None if cache_dir is None else str(Path(cache_dir).joinpath(*parts))


class StreamVoices(StreamingDataset):
    """Clips of one split with a face of the same identity: the streamed twin of voxvgg's shard reader.

    Items are (feats float32 [F, T], face uint8 [3, S, S], label, seed) like the shard source's plus the item's
    seed, which the seeded TrainCollate uses for the batch crop.
    """

    def __init__(
        self,
        url: str,  # the export (folder or object-store URL)
        split: str,
        meta: dict,
        train: bool,  # random window and face per item; else the whole utterance and its fixed face
        max_frames: int,
        pipeline: VoicePipeline,  # its model_input() is the evaluation rule
        seed: int = 0,  # shuffle order and item randomness
        cache_dir=None,  # local copy of remote chunks
        storage_options: dict | None = None,
    ):
        super().__init__(
            join(url, "voices", split),
            cache_dir=_cache(cache_dir, "voices", split),
            shuffle=train,
            seed=seed,
            storage_options=storage_options,
        )
        check_formats(self, join(url, "voices", split))
        self.url, self.split, self.train, self.seed = url, split, train, seed
        self.names, self.face_start = meta["split"][split], meta["face_start"][split]
        self.max_frames, self.pipeline = max_frames, pipeline
        self._cache_root, self._storage = cache_dir, storage_options  # for the face stream

    def __getitem__(self, index):
        item = super().__getitem__(index)
        label, feats, faces = int(item["label"]), item["feats"], item["faces"]
        seed = item_seed(self.seed, self.current_epoch, getattr(index, "index", index))
        if self.train:
            feats, face = train_item(feats, faces, self.max_frames, torch.Generator().manual_seed(seed))
        else:  # the export stores the one fixed face of the evaluation rule
            feats, face = self.pipeline.model_input(feats), faces[0]
        return feats, face, label, seed

    def faces_by_name(self) -> dict[str, torch.Tensor]:
        """{name: uint8 [K, 3, S, S]}: the split's whole face stream (every rank reads all), labels checked."""
        url = join(self.url, "faces", self.split)
        stream = open_stream(
            url, cache_dir=_cache(self._cache_root, "faces", self.split), storage_options=self._storage
        )
        total = self.face_start[-1]
        try:  # global indices: iterating would give only this rank's part under DDP
            items = [stream[i] for i in range(total)]
        except (IndexError, ValueError) as err:
            raise DataError(f"{url}: holds fewer than the {total} faces meta gives ({err}); export it again") from err
        labels = [int(x["label"]) for x in items]
        expected = [i for i in range(len(self.names)) for _ in range(self.face_start[i + 1] - self.face_start[i])]
        if labels != expected:
            raise DataError(f"{url}: faces are not in the order meta gives (identity by identity); export it again")
        stack = torch.stack([x["face"] for x in items])
        return {n: stack[self.face_start[i] : self.face_start[i + 1]] for i, n in enumerate(self.names)}


def stream_loader(dataset: StreamVoices, batch_size: int, num_workers: int, collate_fn, drop_last: bool):
    """litdata's loader: it shards the stream over ranks and workers and stores its position in checkpoints."""
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", required=True, help="output folder of datamodules.prepare (manifest.json, shards/)")
    ap.add_argument("--root", required=True, help="the raw data folder (its vox1_meta.csv gives the split)")
    ap.add_argument("--out", required=True, help="a folder or an object-store URL (s3://, gs://, azure://)")
    ap.add_argument("--chunk-bytes", default="64MB")
    ap.add_argument("--faces-per-clip", type=int, default=8, help="training faces stored with each clip")
    ap.add_argument("--endpoint-url", default=None, help="an S3-compatible endpoint (MinIO, R2, ...)")
    a = ap.parse_args(argv)
    prepared, root = Path(a.prepared), Path(a.root)
    manifest, config = read_manifest(prepared), read_config(prepared)
    attributes = read_attributes_if_any(root)[0]
    options = {"endpoint_url": a.endpoint_url} if a.endpoint_url else None
    t0 = time.perf_counter()
    meta = export(
        prepared / "shards",
        identity_split(root / "vox1_meta.csv", manifest["usable"]),
        a.out,
        config,
        attributes,
        a.chunk_bytes,
        a.faces_per_clip,
        options,
        progress=True,
        source=prepared.resolve().name,
    )
    sizes = {k: len(v) for k, v in meta["split"].items()}
    print(
        json.dumps(
            {"out": a.out, "identities": sizes, "clips": meta["clips"], "seconds": round(time.perf_counter() - t0, 1)},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
