"""VoxCeleb1 ∩ VGGFace: metadata, the identity split, and the LightningDataModule over prepared shards.

The split follows Wen et al. (2019): identities present in both sets (exact VGGFace1 names), first letter
F–Z train, A–B validation, C–E test; labels index the sorted names of a split.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.audio import AudioFeatures, random_crop_batch, tile_to_min
from datamodules.faces import normalize

log = logging.getLogger(__name__)

META_COLUMNS = ("VoxCeleb1 ID", "VGGFace1 ID")
SPLIT_LETTERS = {"train": "FGHIJKLMNOPQRSTUVWXYZ", "val": "AB", "test": "CDE"}


class DataError(ValueError):
    """Bad or missing data; the message names the file or folder and the fix."""


def read_meta(meta_csv) -> list[dict]:
    """Rows of vox1_meta.csv (tab- or comma-separated) with at least `VoxCeleb1 ID` and `VGGFace1 ID`. Quotes
    are read literally (the real file has none, and an unbalanced one would swallow rows); a file without rows,
    or with a VoxCeleb1 ID or a VGGFace1 name on two lines (a train/test leak, or a row that silently wins), is
    refused with the line numbers."""
    meta_csv = Path(meta_csv)
    if not meta_csv.is_file():
        raise DataError(f"{meta_csv}: meta file not found; copy VoxCeleb1's vox1_meta.csv there")
    with open(meta_csv, newline="", encoding="utf-8") as f:
        head = f.readline()
        f.seek(0)
        reader = csv.DictReader(f, delimiter="\t" if "\t" in head else ",", quoting=csv.QUOTE_NONE)
        rows = list(reader)
        columns = [c.strip() for c in reader.fieldnames or []]
    rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in rows]
    missing = [c for c in META_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{meta_csv}: missing columns {missing} (found {head.strip()!r}); expected VoxCeleb1's "
            "tab-separated vox1_meta.csv"
        )
    if not rows:
        raise DataError(f"{meta_csv}: only a header, no identities; expected one line per VoxCeleb1 identity")
    for column in META_COLUMNS:
        lines: dict[str, list[int]] = {}
        for line, r in enumerate(rows, start=2):
            lines.setdefault(r[column], []).append(line)
        repeated = {v: ls for v, ls in lines.items() if len(ls) > 1}
        if repeated:
            shown = "; ".join(f"{v!r} on lines {ls}" for v, ls in list(repeated.items())[:5])
            raise DataError(f"{meta_csv}: {len(repeated)} {column} value(s) appear more than once ({shown}); each "
                            "identity must be on exactly one line")
    return rows


def identity_split(meta_csv, face_names) -> dict[str, list[str]]:
    """Names in the meta file that have faces, split by first letter; each list sorted. Names whose first
    letter is in no split (a digit, a non-ASCII letter) are reported, since they would otherwise vanish."""
    names = {r["VGGFace1 ID"] for r in read_meta(meta_csv)} & set(face_names)
    split = {k: sorted(n for n in names if n[:1].upper() in letters) for k, letters in SPLIT_LETTERS.items()}
    unsplit = sorted(names - {n for ns in split.values() for n in ns})
    if unsplit:
        log.warning("%s: %d identities fall into no split (their first letter is none of A-Z), left out: %s",
                    meta_csv, len(unsplit), unsplit[:10])
    return split


class _Voices(Dataset):
    """Items over every clip of the identities of one split, reading mmap'd shards lazily."""

    def __init__(self, shard_dir: Path, names: list[str], train: bool, max_frames: int, eval_min_frames: int):
        self.shard_dir, self.names, self.train = shard_dir, names, train
        self.max_frames, self.eval_min_frames = max_frames, eval_min_frames
        self.items = []  # (label, clip index)
        for label, n in enumerate(names):
            self.items += [(label, i) for i in range(len(self._shard(n)["clips"]))]
        self._cache = {}

    def _shard(self, name):
        return torch.load(self.shard_dir / f"{name}.pt", mmap=True, weights_only=True)

    def shard(self, name):
        if name not in self._cache:  # per worker process: mmap handles are cheap
            self._cache[name] = self._shard(name)
        return self._cache[name]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        label, i = self.items[index]
        s = self.shard(self.names[label])
        a, b = int(s["offsets"][i]), int(s["offsets"][i + 1])
        K = len(s["faces"])
        if self.train:  # a random window (the collate crops it again to the batch length), a random face
            feats = random_window(s["feats"][:, a:b], self.max_frames)
            face = s["faces"][int(torch.randint(0, K, ()))]
        else:  # the whole utterance, a fixed face
            feats = tile_to_min(s["feats"][:, a:b], self.eval_min_frames)
            face = s["faces"][i % K]
        return feats.float(), face.clone(), label


def random_window(feats, max_frames: int, generator: torch.Generator | None = None):
    """A random run of at most max_frames frames of one clip [F, T] (a view: an mmap'd shard copies only that)."""
    T = feats.shape[1]
    start = int(torch.randint(0, max(T - max_frames, 0) + 1, (), generator=generator))
    return feats[:, start : start + min(max_frames, T)]


def collate_train(items, min_frames: int = 300, max_frames: int = 800, generator: torch.Generator | None = None):
    """One crop length for the batch, a random window per clip."""
    feats, faces, labels = zip(*items)
    audio, lengths = random_crop_batch(list(feats), min_frames, max_frames, generator=generator)
    return {
        "audio": audio,
        "audio_lengths": lengths,
        "face": normalize(torch.stack(faces)),
        "label": torch.tensor(labels),
    }


def collate_eval(items):
    """Whole utterances, zero-padded to the longest, with their lengths."""
    feats, faces, labels = zip(*items)
    lengths = torch.tensor([f.shape[1] for f in feats])
    audio = torch.zeros(len(feats), feats[0].shape[0], int(lengths.max()))
    for j, f in enumerate(feats):
        audio[j, :, : f.shape[1]] = f
    return {
        "audio": audio,
        "audio_lengths": lengths,
        "face": normalize(torch.stack(faces)),
        "label": torch.tensor(labels),
    }


class _TrainCollate:
    def __init__(self, min_frames, max_frames):
        self.min_frames, self.max_frames = min_frames, max_frames

    def __call__(self, items):
        return collate_train(items, self.min_frames, self.max_frames)


def read_attributes_if_any(root: Path) -> tuple[dict | None, dict]:
    """(attributes, kinds) from root/attributes.csv (the embedded corpus), else (None, {})."""
    if not (root / "attributes.csv").is_file():
        return None, {}
    from datamodules.synthetic import ATTRIBUTE_KINDS, read_attributes

    return read_attributes(root / "attributes.csv"), dict(ATTRIBUTE_KINDS)


class VoxVGGDataModule(L.LightningDataModule):
    """Voices and faces of VoxCeleb1 ∩ VGGFace (or the embedded corpus in the same layout).

    `root` is the raw folder (vox1_meta.csv, voxceleb1/wav, vggface); with `corpus` set instead, the
    embedded corpus is generated under `corpus_dir` and used as root. `prepare_data()` builds the shards
    under `cache_dir/<config hash>` once; `setup()` reads them. With `stream` set (a folder or an object-store
    URL, see datamodules.streaming), training reads that litdata export instead: `prepare_data()` exports the
    shards there first when `root` or `corpus` is also given, and with neither the export is read as it is.
    """

    def __init__(
        self,
        root: str | None = None,  # raw data folder; None with `corpus`
        cache_dir: str = "cache/voxvgg",  # prepared shards go under here, keyed by the config hash
        corpus: dict | None = None,  # embedded corpus {identities, seed}: generated instead of reading `root`
        corpus_dir: str | None = None,  # where the embedded corpus is cached (default: cache_dir)
        detector: str = "mtcnn",  # mtcnn | file | none (see datamodules.faces)
        face_size: int = 64,
        features: dict | None = None,  # AudioFeatures kwargs, e.g. {kind: logmel}
        vad: dict | None = None,  # AudioFrontEnd VAD kwargs
        crop_frames: tuple[int, int] = (300, 800),  # train crop length range, frames
        eval_min_frames: int = 1000,  # shorter eval utterances are tiled up to this
        batch_size: int = 64,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        prepare_workers: int = 2,
        stream: str | None = None,  # litdata export (folder or s3:// gs:// azure:// URL) to train from
        stream_cache_dir: str | None = None,  # local copy of streamed chunks (default: cache_dir/stream_chunks)
        storage_options: dict | None = None,  # object-store client options, e.g. {endpoint_url: ...}
    ):
        super().__init__()
        self.save_hyperparameters()  # stored in checkpoints: evaluate / generate rebuild the same data path
        if root is not None and corpus is not None or root is None and corpus is None and stream is None:
            raise DataError(
                "give exactly one of `root` (your data folder) or `corpus` (the embedded corpus), or only "
                "`stream` (an exported dataset)"
            )
        self.root, self.corpus = root, dict(corpus) if corpus else None
        self.cache_dir, self.corpus_dir = Path(cache_dir), Path(corpus_dir or cache_dir)
        self.detector, self.face_size = detector, face_size
        self.features, self.vad = dict(features or {"kind": "logmel"}), dict(vad or {})
        self.crop_frames, self.eval_min_frames = tuple(crop_frames), eval_min_frames
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.prepare_workers = num_workers, prepare_workers
        self.feature_dim = AudioFeatures(**self.features).n_features
        self.stream, self.storage_options = stream, dict(storage_options or {})
        self.stream_cache_dir = Path(stream_cache_dir) if stream_cache_dir else self.cache_dir / "stream_chunks"
        self._split, self._sets, self.attributes, self.attribute_kinds = None, {}, None, {}
        self._resume_stream = None

    def _root(self) -> Path:
        if self.corpus is None:
            root = Path(self.root)
            if not root.is_dir():
                raise DataError(
                    f"{root}: data folder not found; set data.root to the folder holding "
                    "vox1_meta.csv, voxceleb1/wav and vggface"
                )
            return root
        from datamodules.synthetic import ensure_corpus

        return ensure_corpus(self.corpus_dir, **self.corpus)

    def _config(self) -> dict:
        from datamodules.prepare import PREPARE_VERSION  # prepare imports this module

        return {
            "version": PREPARE_VERSION,
            "detector": self.detector,
            "face_size": self.face_size,
            "features": self.features,
            "vad": self.vad,
        }

    def _out(self) -> Path:
        from datamodules.prepare import config_hash

        return self.cache_dir / config_hash({**self._config(), "root": str(self._root().resolve())})

    def _stream_meta(self) -> dict | None:
        from datamodules.streaming import read_stream_meta

        try:
            return read_stream_meta(self.stream, self.stream_cache_dir, self.storage_options)
        except DataError:
            if self.root is None and self.corpus is None:
                raise
            return None

    def prepare_data(self) -> None:
        from datamodules.prepare import prepare

        meta = self._stream_meta() if self.stream is not None else None
        if meta is not None and (self.root is None and self.corpus is None or meta["source"] == self._out().name):
            return
        if meta is not None:
            raise DataError(
                f"{self.stream}: holds an export of other data or preprocessing ({meta['source']}, not "
                f"{self._out().name}); point data.stream elsewhere, or delete it to export again"
            )
        out = self._out()
        # Every time: prepare() keeps each shard whose inputs are unchanged (a scan and a fingerprint per
        # identity) and redoes the others, so a replaced file is picked up.
        prepare(self._root(), out, self.detector, self.face_size, self.features, self.vad,
                workers=self.prepare_workers)
        if self.stream is not None:
            from datamodules.streaming import export

            root = self._root()
            self.setup_shards()
            attributes = read_attributes_if_any(root)[0]
            export(out / "shards", self._split, self.stream, self._config(), attributes,
                   storage_options=self.storage_options, source=out.name)
            self._split, self._sets = None, {}

    def setup(self, stage: str | None = None) -> None:
        if self._split is not None:
            return
        if self.stream is None:
            self.setup_shards()
            return
        from datamodules.streaming import StreamVoices

        meta = self._stream_meta()
        if meta is None:
            raise DataError(f"{self.stream}: not exported yet; call prepare_data() or run python -m "
                            "datamodules.streaming")
        theirs, ours = dict(meta["config"]), self._config()
        if theirs != ours:
            raise DataError(
                f"{self.stream}: exported with preprocessing {theirs}, but the data config asks for {ours}; "
                "set data.features/face_size/detector to match or export again"
            )
        self._split = {k: list(v) for k, v in meta["split"].items()}
        hi = self.crop_frames[1]
        for split in (k for k, names in self._split.items() if names):  # an empty split has no stream
            self._sets[split] = StreamVoices(
                self.stream, split, meta, split == "train", hi, self.eval_min_frames,
                seed=torch.initial_seed() % 2**31, cache_dir=self.stream_cache_dir,
                storage_options=self.storage_options,
            )
        if meta.get("attributes") is not None:
            from datamodules.synthetic import ATTRIBUTE_KINDS

            self.attributes, self.attribute_kinds = meta["attributes"], dict(ATTRIBUTE_KINDS)

    def setup_shards(self) -> None:
        """Read the local shards of `prepare_data()`."""
        root, out = self._root(), self._out()
        manifest_file = out / "manifest.json"
        if not manifest_file.is_file():
            raise DataError(
                f"{manifest_file}: not prepared; call prepare_data() or run python -m datamodules.prepare"
            )
        self.manifest = json.loads(manifest_file.read_text())
        self._split = identity_split(root / "vox1_meta.csv", self.manifest["usable"])
        lo, hi = self.crop_frames
        for split, names in self._split.items():
            self._sets[split] = _Voices(out / "shards", names, split == "train", hi, self.eval_min_frames)
        self.attributes, self.attribute_kinds = read_attributes_if_any(root)

    def speaker_info(self) -> dict[str, dict]:
        """{name: {sex, nationality}} of every identity, from vox1_meta.csv (Gender, Nationality) or, for a
        stream, the exported corpus attributes; {} where neither is known."""
        self.setup()
        if self.stream is not None:
            return {n: {"sex": a.get("sex", ""), "nationality": a.get("nationality", "")}
                    for n, a in (self.attributes or {}).items()}
        return {r["VGGFace1 ID"]: {"sex": r.get("Gender", "")[:1].lower(), "nationality": r.get("Nationality", "")}
                for r in read_meta(self._root() / "vox1_meta.csv")}

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self._split["train"])

    def identities(self, split: str) -> list[str]:
        self.setup()
        return list(self._split[split])

    def faces(self, split: str) -> dict[str, torch.Tensor]:
        """{name: uint8 [K, 3, S, S]} for the identities of a split."""
        self.setup()
        ds = self._sets[split]
        if self.stream is not None:
            return ds.faces_by_name()
        return {n: ds.shard(n)["faces"].clone() for n in ds.names}

    def _loader(self, split, shuffle):
        train = split == "train"
        if self.stream is not None:
            from datamodules.streaming import StreamTrainCollate, collate_stream_eval, stream_loader

            return stream_loader(
                self._sets[split],
                self.batch_size if train else self.eval_batch_size,
                self.num_workers,
                StreamTrainCollate(*self.crop_frames) if train else collate_stream_eval,
                drop_last=train and len(self._sets[split]) > self.batch_size,
            )
        return DataLoader(
            self._sets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=train and len(self._sets[split]) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_TrainCollate(*self.crop_frames) if train else collate_eval,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self):
        self.setup()
        loader = self._loader("train", True)
        if self.stream is not None:
            self._train_loader = loader
            if self._resume_stream:  # litdata's epoch counter seeds its shuffle: continue where the run was
                epoch, done = self._resume_stream["epoch"], self._resume_stream["epoch_done"]
                loader.current_epoch = epoch if done else epoch - 1  # __iter__ adds one; KimgCheckpoint replays
        return loader

    def state_dict(self) -> dict:
        """The stream's epoch, saved in checkpoints (the shard path's order comes from the stored RNG)."""
        loader = getattr(self, "_train_loader", None)
        if loader is None:
            return {}
        state = loader.state_dict()
        done = state["num_samples_yielded"] >= len(loader) * loader.batch_size
        return {"stream": {"epoch": int(state["current_epoch"]), "epoch_done": bool(done)}}

    def load_state_dict(self, state: dict) -> None:
        self._resume_stream = state.get("stream")

    def val_dataloader(self):
        self.setup()
        return self._loader("val", False)

    def test_dataloader(self):
        self.setup()
        return self._loader("test", False)
