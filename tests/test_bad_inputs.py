"""The bad-input catalogue (docs/bad_inputs.md): one case per row. Each bad input must fail with an error that names
the thing (file, folder or config key) and says what to do, and must leave what was already written untouched."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, InstantiationException
from PIL import Image

from datamodules.audio import load_audio
from datamodules.faces import LANDMARK_COLUMNS, load_image, read_landmarks
from datamodules.meta import read_meta
from datamodules.synthetic.traits import ATTRIBUTE_KINDS, read_attributes
from datamodules.voxvgg import VoxVGGDataModule
from experiments.run import check_checkpoint, resolve_ckpt, train
from lightning_modules.callbacks.checkpoint import KimgCheckpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = [
    "+exp=smoke",
    "logger=none",
    "evaluate=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.lr_monitor=null",
    "++trainer.enable_progress_bar=false",
    "data.batch_size=32",
]


# ---------------------------------------------------------------------------------------------------- inputs
def wav(path: Path, samples, rate=16000, subtype="PCM_16") -> Path:
    sf.write(path, np.asarray(samples, dtype=np.float32), rate, subtype=subtype)
    return path


def truncated_wav(path: Path) -> Path:
    wav(path, np.zeros(16000))
    path.write_bytes(path.read_bytes()[:2000])
    return path


def nan_wav(path: Path) -> Path:
    return wav(path, np.full(1600, np.nan), subtype="FLOAT")


def png(path: Path, side: int) -> Path:
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    return path


def huge_png(path: Path, side: int) -> Path:
    """A 1-bit PNG of side² pixels: a few KB on disk, gigabytes once decoded."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        Image.new("1", (side, side)).save(path, optimize=True)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


LANDMARKS_HEAD = "path," + ",".join(LANDMARK_COLUMNS) + "\n"


def attributes(path: Path, names: list[str]) -> Path:
    """attributes.csv with one row per name (a repeated name gives a repeated row)."""
    values = {k: "brown" if kind == "categorical" else "0.5" for k, kind in ATTRIBUTE_KINDS.items()}
    rows = [",".join([n, *values.values()]) for n in names]
    return write(path, "\n".join([",".join(["VGGFace1 ID", *values]), *rows]) + "\n")


def meta_missing_columns(path: Path) -> Path:
    return write(path, "VoxCeleb1 ID\tGender\nid10001\tm\n")


AUDIO_IMAGE_META = {
    # case: (make the bad input in tmp_path -> path, read it, words the error must hold besides the path)
    "audio_missing": (lambda d: d / "none.wav", load_audio, ["no such file"]),
    "audio_folder": (lambda d: (d / "clip.wav").mkdir() or d / "clip.wav", load_audio, ["a folder, not a file"]),
    "audio_fifo": (lambda d: os.mkfifo(d / "pipe.wav") or d / "pipe.wav", load_audio, ["a FIFO (named pipe)"]),
    "audio_symlink_loop": (
        lambda d: os.symlink(d / "loop.wav", d / "loop.wav") or d / "loop.wav",
        load_audio,
        ["a symlink loop"],
    ),
    "audio_broken_symlink": (
        lambda d: os.symlink(d / "gone.wav", d / "link.wav") or d / "link.wav",
        load_audio,
        ["a broken symlink"],
    ),
    "image_folder": (lambda d: (d / "face.jpg").mkdir() or d / "face.jpg", load_image, ["a folder, not a file"]),
    "audio_empty": (lambda d: write(d / "empty.wav", b""), load_audio, ["empty file"]),
    "audio_not_audio": (lambda d: write(d / "text.wav", "hello"), load_audio, ["not a readable audio file"]),
    "audio_truncated": (lambda d: truncated_wav(d / "cut.wav"), load_audio, ["truncated WAV"]),
    "audio_nan_samples": (lambda d: nan_wav(d / "nan.wav"), load_audio, ["NaN or infinity"]),
    "audio_low_rate": (lambda d: wav(d / "low.wav", np.zeros(4000), rate=4000), load_audio, ["below 8000 Hz"]),
    "audio_high_rate": (  # torchaudio's "frequency should be positive", naming no file
        lambda d: wav(d / "high.wav", np.zeros(1000), rate=100_000_000, subtype="FLOAT"),
        load_audio,
        ["sample rate 100000000 Hz is above 768000 Hz"],
    ),
    "image_missing": (lambda d: d / "none.jpg", load_image, ["file not found"]),
    "image_corrupt": (lambda d: write(d / "bad.jpg", b"\xff\xd8\xff garbage"), load_image, ["corrupt image"]),
    "image_tiny": (lambda d: png(d / "tiny.png", 16), load_image, ["smaller than 32 px"]),
    "image_too_large": (lambda d: huge_png(d / "huge.png", 7000), load_image, ["7000×7000 (49 MP)", "shrink it"]),
    "image_bomb": (lambda d: huge_png(d / "bomb.png", 30000), load_image, ["decompression bomb", "900000000"]),
    "landmarks_missing": (lambda d: d / "landmarks.csv", read_landmarks, ["not found", "detector"]),
    "landmarks_no_columns": (
        lambda d: write(d / "landmarks.csv", "path,x\na.jpg,1\n"),
        read_landmarks,
        ["missing columns"],
    ),
    "landmarks_not_numbers": (
        lambda d: write(
            d / "landmarks.csv",
            "path,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,"
            "mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y\na.jpg,x,1,2,3,4,5,6,7,8,9\n",
        ),
        read_landmarks,
        ["line 2", "not numbers"],
    ),
    "landmarks_not_utf8": (  # was UnicodeDecodeError naming no file
        lambda d: write(d / "landmarks.csv", (LANDMARKS_HEAD + "Ren\xe9e/1.jpg" + ",1" * 10 + "\n").encode("latin-1")),
        read_landmarks,
        ["not UTF-8 text", "save it as UTF-8"],
    ),
    "landmarks_repeated_image": (  # the later row silently won
        lambda d: write(d / "landmarks.csv", LANDMARKS_HEAD + ("a/1.jpg" + ",1" * 10 + "\n") * 2),
        read_landmarks,
        ["'a/1.jpg' on lines [2, 3]", "each image"],
    ),
    "landmarks_unbalanced_quote": (  # swallowed the next row into one path
        lambda d: write(d / "landmarks.csv", LANDMARKS_HEAD + '"a/1.jpg' + ",1" * 10 + "\nb/2.jpg" + ",2" * 10 + "\n"),
        read_landmarks,
        ["lines 2-3 are one row", "unbalanced quote"],
    ),
    "attributes_repeated_name": (  # the later row silently won
        lambda d: attributes(d / "attributes.csv", ["Ann_A", "Bob_B", "Ann_A"]),
        read_attributes,
        ["'Ann_A' on lines [2, 4]", "each identity"],
    ),
    "attributes_not_utf8": (
        lambda d: write(d / "attributes.csv", "VGGFace1 ID\nRen\xe9e\n".encode("latin-1")),
        read_attributes,
        ["not UTF-8 text"],
    ),
    "meta_missing": (lambda d: d / "vox1_meta.csv", read_meta, ["not found", "vox1_meta.csv"]),
    "meta_missing_columns": (
        lambda d: meta_missing_columns(d / "vox1_meta.csv"),
        read_meta,
        ["missing columns", "VGGFace1 ID"],
    ),
    "meta_header_only": (
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\n"),
        read_meta,
        ["only a header"],
    ),
    "meta_not_utf8": (  # was UnicodeDecodeError naming no file
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\nid1\tRen\xe9e\n".encode("latin-1")),
        read_meta,
        ["not UTF-8 text", "save it as UTF-8"],
    ),
    "meta_200kb_field": (  # was _csv.Error "field larger than field limit (131072)", naming no file
        lambda d: write(d / "vox1_meta.csv", 'VoxCeleb1 ID\tVGGFace1 ID\nid1\t"' + "A" * 200_000 + '"\n'),
        read_meta,
        ["vox1_meta.csv: line 2", "field larger than field limit"],
    ),
    "meta_duplicate_after_blank_lines": (  # the line numbers did not count blank lines
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\nid1\tAnn_A\n\n\nid2\tBob_B\nid1\tCid_C\n"),
        read_meta,
        ["'id1' on lines [2, 6]"],
    ),
    "meta_duplicate_voxceleb_id": (
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\nid1\tAnn_A\nid2\tBob_B\nid1\tCid_C\n"),
        read_meta,
        ["VoxCeleb1 ID", "'id1' on lines [2, 4]"],
    ),
    "meta_duplicate_name": (
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\nid1\tAnn_A\nid2\tAnn_A\n"),
        read_meta,
        ["VGGFace1 ID", "'Ann_A' on lines [2, 3]"],
    ),
    "data_root_missing": (
        lambda d: d / "no_data",
        lambda p: VoxVGGDataModule(root=str(p), cache_dir=str(p)).setup(),
        ["data folder not found", "data.root"],
    ),
    "data_root_a_file": (  # was "data folder not found"
        lambda d: write(d / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\nid1\tAnn_A\n"),
        lambda p: VoxVGGDataModule(root=str(p), cache_dir=str(p.parent / "cache")).setup(),
        ["a file, not the data folder", "data.root"],
    ),
}


def digest(folder: Path) -> dict[str, str]:
    """Hash of every file under `folder`: what was written before the failure must still be there, unchanged."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", sorted(AUDIO_IMAGE_META))
@pytest.mark.integration
def test_bad_data_file_names_itself_and_the_problem(case, tmp_path):
    make, read, words = AUDIO_IMAGE_META[case]
    write(tmp_path / "kept.txt", "written before")
    path = make(tmp_path)
    before = digest(tmp_path)
    with pytest.raises(ValueError) as err:
        read(path)
    for word in [path.name, *words]:
        assert word in str(err.value), f"{case}: {word!r} not in {err.value}"
    assert digest(tmp_path) == before


@pytest.mark.parametrize("rate", [44101, 96001, 22050])
def test_odd_sample_rates_resample_with_a_bounded_kernel(tmp_path, rate):
    from datamodules.audio import resample_ratio

    orig, new = resample_ratio(rate, 16000)
    assert max(orig, new) / np.gcd(orig, new) <= 1000 and abs(new / orig - 16000 / rate) < 1e-4
    path = wav(tmp_path / "odd.wav", np.sin(np.arange(rate) * 2 * np.pi * 440 / rate), rate=rate)
    assert abs(len(load_audio(path)) - 16000) <= 2  # one second stays one second


def test_images_are_read_as_displayed(tmp_path):
    """EXIF orientation applied (a phone photo stored sideways), 16-bit greyscale scaled rather than clipped."""
    from PIL import Image

    im = Image.new("RGB", (40, 64), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    im.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 64, 3)
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png")[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("top", [1.0, 255.0, 65535.0])
def test_float_tiffs_are_scaled_by_their_range(tmp_path, top):
    """A float TIFF storing 0-1 came out as 0/1 (black): it was scaled as if it stored 0-255."""
    ramp = np.tile(np.linspace(0.0, top, 64, dtype=np.float32), (40, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "float.tif")
    grey = load_image(tmp_path / "float.tif")[0, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255 and abs(grey[32] - round(32 / 63 * 255)) <= 1


def test_a_float_tiff_with_nan_is_refused(tmp_path):
    image = np.zeros((40, 40), np.float32)
    image[3, 3] = np.nan
    Image.fromarray(image, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="nan.tif: F image holds NaN or infinity"):
        load_image(tmp_path / "nan.tif")


def test_a_meta_file_with_a_byte_order_mark_is_read(tmp_path):
    """Saved from Excel or Notepad, the file starts with a UTF-8 BOM: it was refused as missing 'VoxCeleb1 ID'."""
    meta = write(tmp_path / "vox1_meta.csv", "\ufeffVoxCeleb1 ID\tVGGFace1 ID\tGender\nid1\tAnn_A\tf\n".encode())
    assert read_meta(meta) == [{"VoxCeleb1 ID": "id1", "VGGFace1 ID": "Ann_A", "Gender": "f"}]


def test_landmarks_and_attributes_with_a_byte_order_mark_are_read(tmp_path):
    """Hand-edited in Excel or Notepad, both files start with a UTF-8 BOM: the first column was named
    '\\ufeffpath' ('\\ufeffVGGFace1 ID') and refused as missing."""
    landmarks = write(tmp_path / "landmarks.csv", ("\ufeff" + LANDMARKS_HEAD + "a/1.jpg" + ",3" * 10 + "\n").encode())
    assert list(read_landmarks(landmarks)) == ["a/1.jpg"] and read_landmarks(landmarks)["a/1.jpg"].shape == (5, 2)
    plain = attributes(tmp_path / "plain.csv", ["Ann_A"])
    marked = write(tmp_path / "attributes.csv", b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_attributes(marked) == read_attributes(plain) and list(read_attributes(marked)) == ["Ann_A"]


def test_meta_quotes_are_read_literally_and_unsplit_names_are_reported(tmp_path, caplog):
    from datamodules.meta import identity_split

    meta = write(
        tmp_path / "vox1_meta.csv",
        'VoxCeleb1 ID\tVGGFace1 ID\nid1\t"Ann_A\nid2\tBob_B\nid3\tCid_C\nid4\t50_Cent\nid5\tÉmile_Z\n',
    )
    assert [r["VGGFace1 ID"] for r in read_meta(meta)] == ['"Ann_A', "Bob_B", "Cid_C", "50_Cent", "Émile_Z"]
    with caplog.at_level("WARNING"):
        split = identity_split(meta, ["Bob_B", "Cid_C", "50_Cent", "Émile_Z"])
    assert split == {"train": [], "val": ["Bob_B"], "test": ["Cid_C"]}
    assert "2 identities fall into no split" in caplog.text and "50_Cent" in caplog.text


# ---------------------------------------------------------------------------------------------------- configs
def compose_only(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "experiments/conf"), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "override, words",
    [
        ("+exp=no_such_exp", ["no_such_exp", "baseline", "smoke"]),  # the message lists the experiments there are
        ("data=no_such_data", ["no_such_data", "embedded", "voxvgg"]),
        ("trainer=no_such_trainer", ["no_such_trainer", "cpu", "ddp"]),
    ],
)
def test_unknown_config_name_lists_the_choices(override, words):
    with pytest.raises(HydraException) as err:
        compose_only(override)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "override, key, problem",
    [
        ("data.batch_size=big", "data.batch_size", "'big' is not of type 'integer'"),
        ("data.batch_size=0", "data.batch_size", "less than the minimum of 1"),
        ("model.lr=fast", "model.lr", "'fast' is not of type 'number'"),
        ("model.total_kimg=-1", "model.total_kimg", "-1 is not valid"),
        ("seed=abc", "seed", "'abc' is not of type 'integer'"),
        ("data.crop_frames=[500,300]", "data.crop_frames", "increasing order"),
        ("data.eval_batch_size=0", "data.eval_batch_size", "less than the minimum of 1"),
        ("model.betas=[0.5,1.5]", "model.betas.1", "greater than or equal to the maximum of 1"),
        ("model.ema_kimg=-1", "model.ema_kimg", "less than the minimum of 0"),
        ("data.face_size=48", "data.face_size", "48 is not one of"),
        ("data.face_size=4", "data.face_size", "4 is not one of"),
        ("+data.vad.mode=9", "data.vad", "'mode' was unexpected"),
        ("metrics.ppl.num_samples=-4", "metrics.ppl.num_samples", "less than the minimum of 1"),
        ("metrics.identity.galleries=[1]", "metrics.identity.galleries.0", "less than the minimum of 2"),
        ("callbacks.samples.count=-1", "callbacks.samples.count", "less than the minimum of 0"),
        ("trainer.devices=0", "trainer.devices", "is not valid under any of the given schemas"),
        ("trainer.max_epochs=-5", "trainer.max_epochs", "less than the minimum of -1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "less than the minimum of 1"),
        ("trainer.precision=fp8", "trainer.precision", "'fp8' is not one of"),
    ],
)
def test_wrong_type_in_config_names_the_key(compose_cfg, tmp_path, override, key, problem):
    cfg = compose_cfg(*SMOKE, override)
    with pytest.raises(ValueError, match=rf"config: {re.escape(key)}: .*{re.escape(problem)}.*fix the override"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "override, words",
    [
        ("+trainer.strategy=no_such_strategy", "invalid strategy name: `strategy='no_such_strategy'`"),
        ("trainer.devices=x", "`devices` selected with `CPUAccelerator` should be an int > 0"),
    ],
)
def test_a_trainer_setting_lightning_refuses_is_one_config_error(compose_cfg, override, words):
    """Values inside the schema's domains that Lightning still refuses (a strategy name, a device string it cannot
    parse). Was Hydra's InstantiationException, a traceback on the command line."""
    with pytest.raises(ValueError, match=rf"config: trainer: .*{re.escape(words)}.*; fix the trainer override"):
        train(compose_cfg(*SMOKE, override))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["~pretrain_encoder", "model.encoder_mode=frozen"], ["model.encoder_ckpt", "encoder_pretrain"]),
        (
            ["~pretrain_encoder", "model.encoder_mode=finetune", "model.encoder_ckpt=/no/encoder.pt"],
            ["/no/encoder.pt", "encoder_pretrain"],
        ),
        (["model.encoder_ckpt=/my/encoder.pt"], ["/my/encoder.pt", "~pretrain_encoder"]),  # stage 1 would replace it
        (["ckpt_path=/no/such/last.ckpt"], ["/no/such/last.ckpt", "no such checkpoint"]),
    ],
)
def test_missing_required_path_names_it(compose_cfg, overrides, words):
    cfg = compose_cfg(*SMOKE, *overrides)
    with pytest.raises((ValueError, FileNotFoundError, InstantiationException)) as err:  # Hydra adds the key
        train(cfg)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink_loop"])
@pytest.mark.parametrize("loader", ["ckpt_path", "ckpt", "encoder_ckpt"])
def test_a_checkpoint_path_that_is_no_file_says_what_it_is(tmp_path, kind, loader):
    """A run folder given as the checkpoint (or a FIFO, a symlink loop) was "not found" / "no such checkpoint"."""
    from lightning_modules.encoder_pretrain import load_encoder_weights
    from lightning_modules.voice2face_checkpoint import read_checkpoint

    path = tmp_path / "last.ckpt"
    what = {"folder": "a folder, not a file", "fifo": "a FIFO (named pipe)", "symlink_loop": "a symlink loop"}
    {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path), "symlink_loop": lambda: os.symlink(path, path)}[kind]()
    load = {
        "ckpt_path": lambda p: resolve_ckpt(str(p), str(tmp_path)),
        "ckpt": read_checkpoint,
        "encoder_ckpt": lambda p: load_encoder_weights(None, p),
    }[loader]
    with pytest.raises(ValueError, match=rf"{path}: {re.escape(what[kind])}.*; .*{loader}.* must name"):
        load(path)


def test_resume_last_without_any_run_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/last.ckpt under .*ckpt_path=<path"):
        resolve_ckpt("last", str(tmp_path))


def test_resume_last_refuses_the_newest_run_of_another_experiment(compose_cfg, tmp_path):
    """`ckpt_path=last` took the newest last.ckpt of any run: one of other networks with the same shapes (here
    another channel_max) was resumed under this config without a word."""
    from omegaconf import OmegaConf

    from experiments.run import check_last_is_this_run

    log_dir = tmp_path / "outputs"
    for run, extra in (("mine", []), ("other", ["model.generator.channel_max=4"])):
        (log_dir / run / "checkpoints").mkdir(parents=True)
        OmegaConf.save(compose_cfg(*SMOKE, *extra), log_dir / run / "config.yaml")
        write(log_dir / run / "checkpoints" / "last.ckpt", run)
    os.utime(log_dir / "mine" / "checkpoints" / "last.ckpt", (1e9, 1e9))  # the older one
    cfg = compose_cfg(*SMOKE, f"paths.log_dir={log_dir}", "ckpt_path=last")
    newest = resolve_ckpt("last", str(log_dir))
    assert newest.endswith("other/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=last: the newest run .*other.* has other model.generator than"):
        check_last_is_this_run(newest, cfg)
    check_last_is_this_run(str(log_dir / "mine" / "checkpoints" / "last.ckpt"), cfg)  # its own run: fine
    with pytest.raises(ValueError, match=r"ckpt_path=last: the newest run"):
        train(cfg)


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A real 1-iteration smoke run: its last.ckpt and its model."""
    from conftest import compose_train

    out = tmp_path_factory.mktemp("smoke") / "run"
    cfg = compose_train([*SMOKE, "model.total_kimg=0.032"], out)
    GlobalHydra.instance().clear()
    model = train(cfg)[1]["model"]
    return out, model


def variant(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


CHECKPOINTS = {
    # case: (make a bad checkpoint from a good one, words the error must hold besides the path)
    "truncated": (
        lambda good, d: write(d / "cut.ckpt", good.read_bytes()[: good.stat().st_size // 2]),
        ["truncated", "snapshot-*.ckpt"],
    ),
    "empty": (lambda good, d: write(d / "empty.ckpt", b""), ["cannot be read", "train afresh"]),
    "not_a_checkpoint": (
        lambda good, d: (torch.save({"weights": torch.zeros(1)}, d / "x.ckpt"), d / "x.ckpt")[1],
        ["no state_dict", "last.ckpt"],
    ),
    "runs_code_on_load": (
        lambda good, d: (torch.save({"state_dict": {}, "x": np.float64}, d / "x.ckpt"), d / "x.ckpt")[1],
        ["cannot be read"],
    ),
    "other_project": (
        lambda good, d: variant(
            good, d / "theirs.ckpt", lambda c: [c.pop(k) for k in list(c) if k.startswith("voice2face_")]
        ),
        ["not a voice2face checkpoint", "another project"],
    ),
    "other_version": (
        lambda good, d: variant(good, d / "old.ckpt", lambda c: c.pop("voice2face_format")),
        ["another version", "format None"],
    ),
    "other_model": (
        lambda good, d: variant(
            good,
            d / "other.ckpt",
            lambda c: c["state_dict"].update({k: torch.zeros(3) for k in list(c["state_dict"])[:2]}),
        ),
        ["different model", "of other shapes"],
    ),
    "missing_weights": (
        lambda good, d: variant(good, d / "less.ckpt", lambda c: c["state_dict"].pop("pl_mean")),
        ["different model", "missing weights ['pl_mean']"],
    ),
    "generator_train_changed": (  # was an optimizer parameter-group error from inside Lightning
        lambda good, d: variant(good, d / "frozen.ckpt", lambda c: c["hyper_parameters"].update(generator_train="x")),
        ["trained with model.generator_train=x", "this config says model.generator_train=finetune", "train afresh"],
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
@pytest.mark.integration
def test_bad_checkpoint_names_itself_and_the_fix(case, smoke_run, tmp_path):
    out, model = smoke_run
    good = out / "checkpoints" / "last.ckpt"
    kept = digest(out)
    make, words = CHECKPOINTS[case]
    path = make(good, tmp_path)
    with pytest.raises(ValueError) as err:
        check_checkpoint(str(path), model)
    for word in [str(path), *words]:
        assert word in str(err.value), f"{case}: {word!r} not in {err.value}"
    assert digest(out) == kept


@pytest.mark.integration
def test_truncated_checkpoint_through_train_keeps_the_run_folder(compose_cfg, smoke_run, tmp_path):
    out, _ = smoke_run
    cut = write(tmp_path / "cut.ckpt", (out / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    kept = digest(out)
    with pytest.raises(ValueError, match="truncated"):
        train(compose_cfg(*SMOKE, f"ckpt_path={cut}"))
    assert digest(out) == kept


# ---------------------------------------------------------------------------------------------------- disk
def test_output_folder_not_writable(compose_cfg, tmp_path):
    blocker = write(tmp_path / "a_file", "not a folder")
    cfg = compose_cfg(*SMOKE)
    cfg.paths.output_dir = str(blocker / "run")
    with pytest.raises(OSError, match=r"run folder .*a_file/run is not writable.*paths.root_dir"):
        train(cfg)
    assert blocker.read_text() == "not a folder"


def test_checkpoint_folder_not_writable(smoke_run, tmp_path):
    out, model = smoke_run
    blocker = write(tmp_path / "a_file", "not a folder")
    with pytest.raises(OSError, match=r"checkpoint folder .*a_file/checkpoints is not writable.*dirpath"):
        KimgCheckpoint(str(blocker / "checkpoints")).save(model.trainer, "last.ckpt")
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_settings_that_failed_after_stage_1_are_refused_before_it(compose_cfg, monkeypatch, tmp_path):
    """accumulate=3 with a batch of 8, and a GPU trainer on a machine without one, failed only after the encoder
    had trained (minutes); now before any work."""
    import torch

    from experiments.run import train
    from experiments.schema import check_config

    with pytest.raises(ValueError, match="data.batch_size=8 does not split into model.accumulate=3"):
        check_config(compose_cfg("+exp=smoke", "model.accumulate=3", "data.batch_size=8"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg("+exp=smoke", "trainer=gpu")
    with pytest.raises(ValueError, match="trainer.accelerator=gpu, but this machine has no CUDA GPU"):
        train(cfg)
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_cuda_device_without_a_gpu_is_named(tmp_path):
    import torch
    from test_evaluate import smoke_checkpoint

    from lightning_modules.voice2face_checkpoint import model_from_checkpoint, read_checkpoint

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    state = read_checkpoint(smoke_checkpoint(tmp_path / "last.ckpt"))
    with pytest.raises(ValueError, match="device=cuda: this machine has no CUDA GPU .*; pass device=cpu"):
        model_from_checkpoint(state, "cuda")


def test_a_failed_resume_points_to_the_config_that_wrote_the_checkpoint(smoke_run, tmp_path):
    """The session that resumes has already moved the earlier config.yaml to config.N.yaml and written its own: the
    refusal pointed the user to config.yaml, this session's own config."""
    out, model = smoke_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    bad = variant(
        out / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt", lambda c: c["state_dict"].pop("pl_mean")
    )
    (run / "config.yaml").write_text("seed: 2  # this session\n")
    (run / "config.1.yaml").write_text("seed: 1  # the session that wrote the checkpoint\n")
    with pytest.raises(ValueError, match=rf"use the overrides of the run that wrote it \({run}/config.1.yaml\)"):
        check_checkpoint(str(bad), model, run)
    with pytest.raises(ValueError, match=rf"\({run}/config.yaml\)"):  # from another folder: its config.yaml
        check_checkpoint(str(bad), model, tmp_path / "elsewhere")


def test_a_checkpoint_stores_its_data_paths_absolute(tmp_path, monkeypatch):
    """The datamodule's hyper-parameters go into every checkpoint: a stored ./.cache made `evaluate` run from
    another folder generate the corpus there again (183 MB). Local paths are stored absolute; URLs as given."""
    monkeypatch.chdir(tmp_path)
    dm = VoxVGGDataModule(corpus={"identities": 12, "seed": 0}, corpus_dir=".cache/corpus", cache_dir=".cache/embedded")
    assert dm.hparams["corpus_dir"] == str(tmp_path / ".cache/corpus") and dm.hparams["root"] is None
    assert dm.hparams["cache_dir"] == str(tmp_path / ".cache/embedded")
    streamed = VoxVGGDataModule(stream="export", stream_cache_dir="chunks", cache_dir="c")
    assert streamed.hparams["stream"] == str(tmp_path / "export") and streamed.hparams["stream_cache_dir"] == str(
        tmp_path / "chunks"
    )
    assert VoxVGGDataModule(stream="s3://bucket/export", cache_dir="c").hparams["stream"] == "s3://bucket/export"
