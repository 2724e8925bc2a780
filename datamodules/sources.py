"""Where VoxVGGDataModule's items come from, behind one interface: local prepared shards, or a litdata stream.

Both give, after `setup()`: `split` ({train, val, test: sorted names}; a label indexes its split's list), `sets`
(a Dataset per split, items (feats, face, label[, seed]) by datamodules.items' rules), `attributes` /
`attribute_kinds` (the embedded corpus' ground truth, else None / {}); and `faces(split)`, `speaker_info()`,
`loader(split, batch_size, num_workers, crop_frames)`, `state_dict()` / `load_state_dict()` (what a checkpoint
needs to resume the loader's order).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.files import DataError
from datamodules.items import TrainCollate, collate_eval, eval_face_index, train_item
from datamodules.meta import ATTRIBUTE_KINDS, identity_split, read_attributes_if_any, speakers_from_meta
from datamodules.pipeline import VoicePipeline
from datamodules.prepare import prepare
from datamodules.shards import (
    face_align_of,
    prepared_folder,
    preprocessing_config,
    read_manifest,
    read_shard,
    shard_file,
)
from datamodules.streaming import StreamVoices, export, read_stream_meta, stream_loader
from datamodules.synthetic import ensure_corpus


class ShardVoices(Dataset):
    """Items over every clip of the identities of one split, reading mmap'd shards lazily."""

    def __init__(self, prepared: Path, names: list[str], train: bool, max_frames: int, pipeline: VoicePipeline):
        self.prepared, self.names, self.train = prepared, names, train
        self.max_frames, self.pipeline = max_frames, pipeline
        self.items = []  # (label, clip index)
        for label, n in enumerate(names):
            self.items += [(label, i) for i in range(read_shard(shard_file(prepared, n)).num_clips)]
        self._cache = {}

    def shard(self, name):
        if name not in self._cache:  # per worker process: mmap handles are cheap
            self._cache[name] = read_shard(shard_file(self.prepared, name))
        return self._cache[name]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        label, i = self.items[index]
        s = self.shard(self.names[label])
        if self.train:  # a random window (the collate crops it again to the batch length), a random face
            feats, face = train_item(s.clip(i), s.faces, self.max_frames)
            return feats, face, label
        return self.pipeline.model_input(s.clip(i)), s.faces[eval_face_index(i, len(s.faces))].clone(), label


class ShardSource:
    """Prepared shards under <cache_dir>/<config hash>, made from a raw folder or the embedded corpus."""

    def __init__(
        self,
        root: str | None,
        corpus: dict | None,
        corpus_dir: Path,
        cache_dir: Path,
        detector: str,
        face_size: int,
        face_align: str,
        features: dict,
        vad: dict,
        crop_frames: tuple[int, int],
        pipeline: VoicePipeline,
        prepare_workers: int,
    ):
        self.raw, self.corpus, self.corpus_dir, self.cache_dir = root, corpus, corpus_dir, cache_dir
        self.config = preprocessing_config(detector, face_size, features, vad, face_align)
        self.crop_frames, self.pipeline, self.prepare_workers = crop_frames, pipeline, prepare_workers
        self.split, self.sets, self.attributes, self.attribute_kinds, self.manifest = None, {}, None, {}, None

    def root(self) -> Path:
        if self.corpus is not None:
            return ensure_corpus(self.corpus_dir, **self.corpus)
        root = Path(self.raw)
        if not root.is_dir():
            problem = "a file, not the data folder" if root.exists() else "data folder not found"
            raise DataError(
                f"{root}: {problem}; set data.root to the folder holding vox1_meta.csv, voxceleb1/wav and vggface"
            )
        return root

    def folder(self) -> Path:
        """The prepared folder of this config and root."""
        return prepared_folder(self.cache_dir, self.config, self.root())

    def prepare(self) -> None:
        # Every time: prepare() keeps each shard whose inputs are unchanged (a scan and a fingerprint per
        # identity) and redoes the others, so a replaced file is picked up.
        c = self.config
        prepare(
            self.root(),
            self.folder(),
            c["detector"],
            c["face_size"],
            c["features"],
            c["vad"],
            face_align_of(c),
            workers=self.prepare_workers,
        )

    def read_split(self) -> dict[str, list[str]]:
        self.manifest = read_manifest(self.folder())
        return identity_split(self.root() / "vox1_meta.csv", self.manifest["usable"])

    def setup(self) -> None:
        self.split, prepared = self.read_split(), self.folder()
        for split, names in self.split.items():
            self.sets[split] = ShardVoices(prepared, names, split == "train", self.crop_frames[1], self.pipeline)
        self.attributes, self.attribute_kinds = read_attributes_if_any(self.root())

    def faces(self, split: str) -> dict[str, torch.Tensor]:
        ds = self.sets[split]
        return {n: ds.shard(n).faces.clone() for n in ds.names}

    def speaker_info(self) -> dict[str, dict]:
        return speakers_from_meta(self.root() / "vox1_meta.csv")

    def loader(self, split: str, batch_size: int, num_workers: int):
        train = split == "train"
        return DataLoader(
            self.sets[split],
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(self.sets[split]) > batch_size,
            num_workers=num_workers,
            collate_fn=TrainCollate(*self.crop_frames) if train else collate_eval,
            persistent_workers=num_workers > 0,
        )

    def state_dict(self) -> dict:
        return {}  # the shuffle order comes from the RNG state the checkpoint stores

    def load_state_dict(self, state: dict) -> None:
        pass


class StreamSource:
    """A litdata export (folder or object-store URL); `shards` given: exported from them first when needed."""

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        storage_options: dict,
        shards: ShardSource | None,
        config: dict,
        crop_frames: tuple[int, int],
        pipeline: VoicePipeline,
    ):
        self.url, self.cache_dir, self.storage_options, self.shards = url, cache_dir, storage_options, shards
        self.config, self.crop_frames, self.pipeline = config, crop_frames, pipeline
        self.split, self.sets, self.attributes, self.attribute_kinds, self.manifest = None, {}, None, {}, None
        self._train_loader, self._resume = None, None

    def meta(self, optional: bool = False) -> dict | None:
        """The export's meta record; None when there is none yet and `optional` (it can still be exported)."""
        try:
            return read_stream_meta(self.url, self.cache_dir, self.storage_options)
        except DataError:
            if optional and self.shards is not None:
                return None
            raise

    def prepare(self) -> None:
        meta = self.meta(optional=True)
        if meta is not None and (self.shards is None or meta["source"] == self.shards.folder().name):
            return
        if meta is not None:
            raise DataError(
                f"{self.url}: holds an export of other data or preprocessing ({meta['source']}, not "
                f"{self.shards.folder().name}); point data.stream elsewhere, or delete it to export again"
            )
        self.shards.prepare()
        prepared = self.shards.folder()
        export(
            prepared / "shards",
            self.shards.read_split(),
            self.url,
            self.config,
            read_attributes_if_any(self.shards.root())[0],
            storage_options=self.storage_options,
            source=prepared.name,
        )

    def setup(self) -> None:
        meta = self.meta(optional=True)
        if meta is None:
            raise DataError(f"{self.url}: not exported yet; call prepare_data() or run python -m datamodules.streaming")
        theirs = dict(meta["config"])
        if theirs != self.config:
            raise DataError(
                f"{self.url}: exported with preprocessing {theirs}, but the data config asks for "
                f"{self.config}; set data.features/face_size/face_align/detector to match or export again"
            )
        self.split = {k: list(v) for k, v in meta["split"].items()}
        for split in (k for k, names in self.split.items() if names):  # an empty split has no stream
            self.sets[split] = StreamVoices(
                self.url,
                split,
                meta,
                split == "train",
                self.crop_frames[1],
                self.pipeline,
                seed=torch.initial_seed() % 2**31,
                cache_dir=self.cache_dir,
                storage_options=self.storage_options,
            )
        if meta.get("attributes") is not None:
            self.attributes, self.attribute_kinds = meta["attributes"], dict(ATTRIBUTE_KINDS)

    def faces(self, split: str) -> dict[str, torch.Tensor]:
        return self.sets[split].faces_by_name()

    def speaker_info(self) -> dict[str, dict]:
        return {
            n: {"sex": a.get("sex", ""), "nationality": a.get("nationality", "")}
            for n, a in (self.attributes or {}).items()
        }

    def loader(self, split: str, batch_size: int, num_workers: int):
        train = split == "train"
        loader = stream_loader(
            self.sets[split],
            batch_size,
            num_workers,
            TrainCollate(*self.crop_frames, seeded=True) if train else collate_eval,
            drop_last=train and len(self.sets[split]) > batch_size,
        )
        if train:
            self._train_loader = loader
            if self._resume:  # litdata's epoch counter seeds its shuffle: continue where the run was
                epoch, done = self._resume["epoch"], self._resume["epoch_done"]
                loader.current_epoch = epoch if done else epoch - 1  # __iter__ adds one; KimgCheckpoint replays
        return loader

    def state_dict(self) -> dict:
        """The stream's epoch, saved in checkpoints (the shard path's order comes from the stored RNG)."""
        loader = self._train_loader
        if loader is None:
            return {}
        state = loader.state_dict()
        done = state["num_samples_yielded"] >= len(loader) * loader.batch_size
        return {"stream": {"epoch": int(state["current_epoch"]), "epoch_done": bool(done)}}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state.get("stream")
