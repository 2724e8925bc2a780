"""Prepared shards -> litdata's chunked format, streamed back from a local folder or an object store.

    python -m datamodules.streaming --prepared DIR --root DIR --out DIR|s3://bucket/prefix [--chunk-bytes 64MB]
                                    [--endpoint-url URL]

Layout under `out` (each a litdata dataset: index.json + chunk files; `meta` is written last, so an export
exists only when complete):
  voices/<split>/  one item per clip, identity by identity: {label, clip, feats float16 [F, T]}
  faces/<split>/   one item per aligned face, identity by identity: {label, face uint8 [3, S, S]}
  meta/            one item: the JSON of the split (names per split, label = index), the face index range of
                   each label, clip counts, the preprocessing config and, for the embedded corpus, attributes.

Why two streams and not one item per (voice, face) pair: training pairs every clip with an independent random
face of the same identity; storing faces once and fetching one by index (the faces of label l are the range
face_start[l]:face_start[l+1]) keeps the voice stream shuffled by litdata while faces stay a random-access
table. Randomness (crop window, face, batch crop length) is a function of (seed, epoch, sample index), not of
the global RNG, so a resumed run sees the same batches with any number of workers or ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize

from datamodules.audio import random_crop_batch, tile_to_min
from datamodules.faces import normalize
from datamodules.voxvgg import DataError, collate_eval

STREAM_VERSION = "1"  # bump when the item layout changes
SPLITS = ("train", "val", "test")


def join(url: str, *parts: str) -> str:
    """Child path of a folder or an object-store URL (s3://bucket/prefix)."""
    return "/".join([str(url).rstrip("/"), *parts])


def is_remote(url: str) -> bool:
    return "://" in str(url) or str(url).startswith("local:")


def _shard(path: str) -> dict:
    return torch.load(path, mmap=True, weights_only=True)


# The item functions run in a forked worker: copies go through numpy, because a torch op that enters OpenMP in
# a child forked from a parent that already used the OpenMP pool can hang.
def _voice_items(job: tuple[str, int]):
    path, label = job
    s = _shard(path)
    feats, offsets = s["feats"].numpy(), s["offsets"].tolist()
    for i in range(len(s["clips"])):
        yield {"label": label, "clip": i, "feats": torch.from_numpy(feats[:, offsets[i] : offsets[i + 1]].copy())}


def _face_items(job: tuple[str, int]):
    path, label = job
    for face in _shard(path)["faces"].numpy():
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
    storage_options: dict | None = None,  # e.g. {"endpoint_url": ...} for S3-compatible stores
    progress: bool = False,
    source: str | None = None,  # what the shards were made from (the prepared folder's hash), kept in meta
) -> dict:
    """Write the streaming datasets and return the meta record; an interrupted export is redone whole."""
    shard_dir = Path(shard_dir)
    missing = [n for names in split.values() for n in names if not (shard_dir / f"{n}.pt").is_file()]
    if missing:
        raise DataError(f"{shard_dir}: no shards for {missing[:5]}; run datamodules.prepare first")
    meta = {"version": STREAM_VERSION, "config": config, "source": source, "split": {}, "face_start": {}, "clips": {}}
    options = dict(storage_options or {})
    for name in SPLITS:
        names = sorted(split.get(name, []))
        jobs = [(str(shard_dir / f"{n}.pt"), label) for label, n in enumerate(names)]
        faces = [len(_shard(p)["faces"]) for p, _ in jobs]
        clips = [len(_shard(p)["clips"]) for p, _ in jobs]
        meta["split"][name] = names
        meta["face_start"][name] = [0, *torch.tensor(faces, dtype=torch.long).cumsum(0).tolist()]
        meta["clips"][name] = sum(clips)
        for kind, fn in (("voices", _voice_items), ("faces", _face_items)):
            if not jobs:
                continue
            _optimize(fn, jobs, join(out, kind, name), chunk_bytes, options, progress)
    meta["attributes"] = attributes
    _optimize(_meta_item, [json.dumps(meta, sort_keys=True)], join(out, "meta"), chunk_bytes, options, progress)
    return meta


def _optimize(fn, inputs, output_dir, chunk_bytes, storage_options, progress) -> None:
    # One worker in input order: the face ranges in meta assume identity-by-identity order. Fork on Linux: a
    # spawned worker re-imports torch (seconds per dataset), and optimize() sets the start method process-wide.
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


def read_stream_meta(url: str, cache_dir=None, storage_options: dict | None = None) -> dict:
    """The meta record of an export; DataError naming the URL when it is missing or from another version."""
    try:
        ds = StreamingDataset(join(url, "meta"), cache_dir=_cache(cache_dir, "meta"), storage_options=storage_options)
        meta = json.loads(ds[0]["json"])
    except Exception as err:  # litdata and the store clients raise many kinds; all mean no readable export
        raise DataError(
            f"{url}: no streaming export found ({type(err).__name__}: {err}); run python -m datamodules.streaming "
            "--prepared DIR --root DIR --out URL, or set data.stream to an exported folder or URL"
        ) from err
    if meta.get("version") != STREAM_VERSION:
        raise DataError(
            f"{url}: exported with stream version {meta.get('version')}, this code reads {STREAM_VERSION}; "
            "export again from the prepared shards"
        )
    return meta


def _cache(cache_dir, *parts) -> str | None:
    return None if cache_dir is None else str(Path(cache_dir).joinpath(*parts))


def item_seed(*keys) -> int:
    """A 63-bit seed from (seed, epoch, index, ...): the same on every worker, rank and resume."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1


class StreamVoices(StreamingDataset):
    """Clips of one split with a face of the same identity: the streamed twin of voxvgg's shard reader.

    Items are (feats float32 [F, T], face uint8 [3, S, S], label, seed) like voxvgg._Voices plus the item's seed,
    which collate_stream_train uses for the batch crop.
    """

    def __init__(
        self,
        url: str,  # the export (folder or object-store URL)
        split: str,
        meta: dict,
        train: bool,  # random window and face per item; else the whole utterance and a fixed face
        max_frames: int,
        eval_min_frames: int,
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
        self.faces = StreamingDataset(
            join(url, "faces", split), cache_dir=_cache(cache_dir, "faces", split), storage_options=storage_options
        )
        self.url, self.split, self.train, self.seed = url, split, train, seed
        self.names, self.face_start = meta["split"][split], meta["face_start"][split]
        self.max_frames, self.eval_min_frames = max_frames, eval_min_frames

    def __getitem__(self, index):
        item = super().__getitem__(index)
        label, clip, feats = int(item["label"]), int(item["clip"]), item["feats"]
        lo, hi = self.face_start[label], self.face_start[label + 1]
        key = getattr(index, "index", index)
        seed = item_seed(self.seed, self.current_epoch, key)
        if self.train:
            g = torch.Generator().manual_seed(seed)
            T = feats.shape[1]
            start = int(torch.randint(0, max(T - self.max_frames, 0) + 1, (), generator=g))
            feats = feats[:, start : start + min(self.max_frames, T)]
            j = lo + int(torch.randint(0, hi - lo, (), generator=g))
        else:
            feats, j = tile_to_min(feats, self.eval_min_frames), lo + clip % (hi - lo)
        face = self.faces[j]
        if int(face["label"]) != label:
            raise DataError(
                f"{join(self.url, 'faces', self.split)}: face {j} belongs to label {int(face['label'])}, expected "
                f"{label}; the export is out of order, export it again"
            )
        return feats.float(), face["face"], label, seed

    def faces_by_name(self) -> dict[str, torch.Tensor]:
        """{name: uint8 [K, 3, S, S]} read in order from the face stream."""
        stack = torch.stack([self.faces[j]["face"] for j in range(len(self.faces))])
        return {n: stack[self.face_start[i] : self.face_start[i + 1]] for i, n in enumerate(self.names)}


class StreamTrainCollate:
    """One crop length per batch, drawn from the first item's seed (so it follows the data, not the RNG)."""

    def __init__(self, min_frames: int, max_frames: int):
        self.min_frames, self.max_frames = min_frames, max_frames

    def __call__(self, items):
        feats, faces, labels, seeds = zip(*items)
        g = torch.Generator().manual_seed(item_seed("batch", seeds[0]))
        audio, lengths = random_crop_batch(list(feats), self.min_frames, self.max_frames, generator=g)
        return {"audio": audio, "audio_lengths": lengths, "face": normalize(torch.stack(faces)),
                "label": torch.tensor(labels)}


def collate_stream_eval(items):
    return collate_eval([item[:3] for item in items])


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


def main(argv: list[str] | None = None) -> None:
    from datamodules.voxvgg import identity_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", required=True, help="output folder of datamodules.prepare (manifest.json, shards/)")
    ap.add_argument("--root", required=True, help="the raw data folder (its vox1_meta.csv gives the split)")
    ap.add_argument("--out", required=True, help="a folder or an object-store URL (s3://, gs://, azure://)")
    ap.add_argument("--chunk-bytes", default="64MB")
    ap.add_argument("--endpoint-url", default=None, help="an S3-compatible endpoint (MinIO, R2, ...)")
    a = ap.parse_args(argv)
    prepared, root = Path(a.prepared), Path(a.root)
    manifest_file = prepared / "manifest.json"
    if not manifest_file.is_file():
        raise DataError(f"{manifest_file}: not prepared; run python -m datamodules.prepare first")
    manifest = json.loads(manifest_file.read_text())
    config = json.loads((prepared / "config.json").read_text())["config"]
    attributes = None
    if (root / "attributes.csv").is_file():
        from datamodules.synthetic import read_attributes

        attributes = read_attributes(root / "attributes.csv")
    options = {"endpoint_url": a.endpoint_url} if a.endpoint_url else None
    t0 = time.perf_counter()
    meta = export(prepared / "shards", identity_split(root / "vox1_meta.csv", manifest["usable"]), a.out, config,
                  attributes, a.chunk_bytes, options, progress=True, source=prepared.resolve().name)
    sizes = {k: len(v) for k, v in meta["split"].items()}
    print(json.dumps({"out": a.out, "identities": sizes, "clips": meta["clips"],
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
