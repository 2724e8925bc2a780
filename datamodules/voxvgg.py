"""The LightningDataModule of VoxCeleb1 ∩ VGGFace (or the embedded corpus in the same layout).

It holds the data settings and delegates to one source (datamodules.sources): local prepared shards, or a
litdata stream. Metadata and split: datamodules.meta; the shard format: datamodules.shards; item rules:
datamodules.items; file -> features: datamodules.pipeline.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import lightning as L
import torch

from datamodules.audio import AudioFeatures
from datamodules.files import DataError
from datamodules.pipeline import VoicePipeline
from datamodules.shards import preprocessing_config
from datamodules.sources import ShardSource, StreamSource


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
        face_align: str = "arcface",  # arcface | ffhq: the crop the landmarks map to (see datamodules.faces)
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
        # stored absolute: `evaluate` run from another folder regenerated the corpus there from a stored ./.cache
        local = {"root": root, "cache_dir": cache_dir, "corpus_dir": corpus_dir, "stream_cache_dir": stream_cache_dir}
        local["stream"] = stream if stream is not None and "://" not in stream else None
        self.hparams.update({k: os.path.abspath(v) for k, v in local.items() if v is not None})
        if root is not None and corpus is not None or root is None and corpus is None and stream is None:
            raise DataError(
                "give exactly one of `root` (your data folder) or `corpus` (the embedded corpus), or only "
                "`stream` (an exported dataset)"
            )
        # the pre-emphasis always stored: a checkpoint without one predates the paper's 0.95 (pipeline.stored_features)
        preemphasis = inspect.signature(AudioFeatures).parameters["preemphasis"].default
        features = {"preemphasis": preemphasis, **dict(features or {"kind": "logmel"})}
        self.hparams["features"] = features
        self.face_size, self.features, self.vad = face_size, features, dict(vad or {})
        self.crop_frames, self.eval_min_frames = tuple(crop_frames), eval_min_frames
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.stream = stream
        self.pipeline = VoicePipeline(self.features, self.vad, eval_min_frames)
        self.feature_dim = self.pipeline.n_features
        shards = None
        if root is not None or corpus is not None:
            folders = Path(corpus_dir or cache_dir), Path(cache_dir)
            shards = self._shards(root, corpus, *folders, detector, face_align, prepare_workers)
        self.source = shards
        if stream is not None:
            chunks = Path(stream_cache_dir) if stream_cache_dir else Path(cache_dir) / "stream_chunks"
            config = preprocessing_config(detector, face_size, self.features, self.vad, face_align)
            self.source = StreamSource(
                stream, chunks, dict(storage_options or {}), shards, config, self.crop_frames, self.pipeline
            )
        self._ready = False

    def _shards(self, root, corpus, corpus_dir: Path, cache_dir: Path, detector, face_align, workers) -> ShardSource:
        """The prepared shards of `root`, or of the embedded corpus generated into `corpus_dir`, under `cache_dir`."""
        return ShardSource(
            root,
            dict(corpus) if corpus else None,
            corpus_dir,
            cache_dir,
            detector,
            self.face_size,
            face_align,
            self.features,
            self.vad,
            self.crop_frames,
            self.pipeline,
            workers,
        )

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if not self._ready:
            self.source.setup()
            self._ready = True

    @property
    def attributes(self) -> dict | None:
        return self.source.attributes

    @property
    def attribute_kinds(self) -> dict:
        return self.source.attribute_kinds

    @property
    def manifest(self) -> dict | None:
        return self.source.manifest

    def speaker_info(self) -> dict[str, dict]:
        """{name: {sex, nationality}} of every identity, from vox1_meta.csv (Gender, Nationality) or, for a
        stream, the exported corpus attributes; {} where neither is known."""
        self.setup()
        return self.source.speaker_info()

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.source.split["train"])

    def identities(self, split: str) -> list[str]:
        self.setup()
        return list(self.source.split[split])

    def faces(self, split: str) -> dict[str, torch.Tensor]:
        """{name: uint8 [K, 3, S, S]} for the identities of a split."""
        self.setup()
        return self.source.faces(split)

    def _loader(self, split: str):
        self.setup()
        batch = self.batch_size if split == "train" else self.eval_batch_size
        return self.source.loader(split, batch, self.num_workers)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def state_dict(self) -> dict:
        """What the source needs to resume its order (the stream's epoch; nothing for shards)."""
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
