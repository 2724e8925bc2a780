import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules.files import DataError
from datamodules.meta import identity_split, read_meta
from datamodules.voxvgg import VoxVGGDataModule

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from datamodules.synthetic import ensure_corpus

    return ensure_corpus(tmp_path_factory.mktemp("corpus"), identities=8, seed=0)


def make_tree(root: Path, corpus: Path) -> Path:
    """A real-layout tree: 3 train + 1 val + 1 test identity with voices and faces, one voice-only identity,
    one face-only, one grayscale and one corrupt image; wavs borrowed from the embedded corpus."""
    wavs = sorted((corpus / "voxceleb1" / "wav").rglob("*.wav"))
    people = {
        "id10001": "Fred_Ames",
        "id10002": "Zoe_Park",
        "id10003": "Mia_Long",
        "id10004": "Ada_Bell",
        "id10005": "Cid_Doe",
        "id10006": "Gus_NoFace",
    }
    rows = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    rows += [f"{v}\t{n}\tm\tUSA\tdev" for v, n in people.items()] + ["id10007\tHal_NoVoice\tm\tUSA\tdev"]
    root.mkdir(parents=True)
    (root / "vox1_meta.csv").write_text("\n".join(rows) + "\n")
    for i, vid in enumerate(people):
        for j in range(2):
            dst = root / "voxceleb1" / "wav" / vid / "vidABCDEFGH" / f"{j:05d}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(wavs[(2 * i + j) % len(wavs)], dst)
    for name in list(people.values())[:5] + ["Hal_NoVoice"]:
        d = root / "vggface" / name
        d.mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (80, 80), (40 * j, 100, 150)).save(d / f"{j:05d}.jpg")
    Image.new("L", (80, 80), 90).save(root / "vggface" / "Fred_Ames" / "00002.jpg")
    (root / "vggface" / "Zoe_Park" / "00003.jpg").write_bytes(b"corrupt")
    return root


def test_split_counts_on_real_meta():
    meta = SHARED / "data" / "vox1_meta.csv"
    if not meta.is_file():
        pytest.skip(f"{meta} absent")
    names = [r["VGGFace1 ID"] for r in read_meta(meta)]
    split = identity_split(meta, names)
    assert {k: len(v) for k, v in split.items()} == {"train": 942, "val": 116, "test": 193}
    assert all(v == sorted(v) for v in split.values())
    assert len(identity_split(meta, names[:10])["val"]) == 10  # only names with faces count


def test_meta_errors(tmp_path):
    with pytest.raises(DataError, match="meta file not found"):
        read_meta(tmp_path / "nope.csv")
    (tmp_path / "m.csv").write_text("id\tname\nid10001\tA_B\n")
    with pytest.raises(DataError, match=r"m.csv: missing columns"):
        read_meta(tmp_path / "m.csv")


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        VoxVGGDataModule(root=str(tmp_path / "absent"), cache_dir=str(tmp_path / "c"), detector="none").prepare_data()
    (tmp_path / "r").mkdir()
    with pytest.raises(DataError, match="voxceleb1/wav: folder not found"):
        VoxVGGDataModule(root=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"), detector="none").prepare_data()


@pytest.mark.integration
def test_fixture_tree_intersection_and_labels(tmp_path, corpus):
    root = make_tree(tmp_path / "raw", corpus)
    dm = VoxVGGDataModule(
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        detector="none",
        batch_size=2,
        eval_batch_size=2,
        prepare_workers=1,
        crop_frames=(30, 40),
        eval_min_frames=50,
    )
    dm.prepare_data()
    dm.setup()
    assert dm.identities("train") == ["Fred_Ames", "Mia_Long", "Zoe_Park"] and dm.num_classes == 3
    assert dm.identities("val") == ["Ada_Bell"] and dm.identities("test") == ["Cid_Doe"]
    c = dm.manifest["counts"]
    assert c["dropped_voice_without_face"] == 1 and c["dropped_face_without_voice"] == 1
    skipped = dict(map(tuple, dm.manifest["skipped"]))
    assert "unreadable" in skipped["vggface/Zoe_Park/00003.jpg"]
    assert dm.faces("train")["Fred_Ames"].shape == (3, 3, 64, 64)  # the grayscale one converted, kept
    assert dm.attributes is None and dm.attribute_kinds == {}
    b = next(iter(dm.train_dataloader()))
    assert b["audio"].shape[:2] == (2, dm.feature_dim) and 30 <= b["audio"].shape[2] <= 40
    assert (b["audio_lengths"] == b["audio"].shape[2]).all() and b["face"].shape == (2, 3, 64, 64)
    labels = torch.cat([x["label"] for x in dm.train_dataloader()])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    v = next(iter(dm.test_dataloader()))
    assert v["label"].tolist() == [0, 0] and v["audio"].shape[2] >= 50 and v["face"].abs().max() <= 1


def test_embedded_corpus_split_and_batches(tmp_path, corpus):
    dm = VoxVGGDataModule(
        corpus={"identities": 8, "seed": 0},
        corpus_dir=str(corpus.parent),
        cache_dir=str(tmp_path / "cache"),
        detector="file",
        batch_size=4,
        prepare_workers=1,
    )
    dm.prepare_data()
    expected = identity_split(corpus / "vox1_meta.csv", [p.name for p in (corpus / "vggface").iterdir()])
    voice_ids = {p.name for p in (corpus / "voxceleb1" / "wav").iterdir()}
    meta = {r["VGGFace1 ID"]: r["VoxCeleb1 ID"] for r in read_meta(corpus / "vox1_meta.csv")}
    for split in ("train", "val", "test"):
        assert dm.identities(split) == [n for n in expected[split] if meta[n] in voice_ids]
    assert dm.num_classes == len(dm.identities("train")) > 0
    assert set(dm.attributes) >= set(dm.identities("train")) and dm.attribute_kinds
    b = next(iter(dm.train_dataloader()))
    assert b["label"].max() < dm.num_classes and b["audio"].shape[1] == 64
    info = dm.speaker_info()  # from vox1_meta.csv: Gender, Nationality (what the sample grids order by)
    for name in dm.identities("test"):
        assert info[name] == {"sex": dm.attributes[name]["sex"], "nationality": dm.attributes[name]["nationality"]}


def test_datamodule_stores_its_pre_emphasis(tmp_path):
    """The pre-emphasis is always in the stored hyper-parameters, so a checkpoint's inference path cannot take a
    later default (datamodules.pipeline.stored_features reads a log-mel config without one as 0.97)."""
    dm = VoxVGGDataModule(corpus={"identities": 4, "seed": 0}, cache_dir=str(tmp_path), detector="file")
    assert dm.hparams.features == {"kind": "logmel", "preemphasis": 0.95} == dm.features
    assert dm.pipeline.front.features.preemphasis == 0.95
    wen = VoxVGGDataModule(corpus={"identities": 4, "seed": 0}, cache_dir=str(tmp_path), features={"preemphasis": 0.97})
    assert wen.hparams.features["preemphasis"] == 0.97 == wen.pipeline.front.features.preemphasis
