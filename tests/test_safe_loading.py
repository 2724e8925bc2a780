"""Files a user is handed (checkpoints, encoder files, streaming exports) are read without running their code.
Each crafted file would create a marker file if its code ran: the test first shows that it does when read the
unsafe way, then that our loaders refuse it with a message naming the file, and that the marker stays absent."""

from __future__ import annotations

import json
import pathlib

import hydra
import lightning
import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from datamodules.files import DataError


class Touch:
    """Pickles to a call of Path.touch: unpickling it without restriction creates `path`."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def smoke_checkpoint(tmp_path) -> tuple[dict, pathlib.Path]:
    """A checkpoint of an untrained smoke-size Voice2FaceGAN, laid out as Lightning writes one."""
    from lightning_modules.voice2face import CHECKPOINT_FORMAT

    cfg = compose_train(["+exp=smoke"], tmp_path / "run")
    model = hydra.utils.instantiate(
        OmegaConf.to_container(cfg.model, resolve=True),
        num_classes=4,
        feature_dim=64,
        img_resolution=16,
        encoder_mode="joint",  # no stage 1 here to write the encoder file
        _recursive_=False,
    )
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "voice2face_format": CHECKPOINT_FORMAT,
    }
    path = tmp_path / "good.ckpt"
    torch.save(ckpt, path)
    return ckpt, path


def open_config(marker: pathlib.Path) -> dict:
    """A config whose instantiation creates (or truncates) `marker`: any file could be overwritten this way."""
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def test_a_clean_checkpoint_loads(tmp_path):
    from experiments.evaluate import load_model

    _, path = smoke_checkpoint(tmp_path)
    assert load_model(path).G.img_resolution == 16


def test_nested_target_in_hyper_parameters_is_refused(tmp_path):
    from experiments.evaluate import load_model

    ckpt, _ = smoke_checkpoint(tmp_path)
    shown = tmp_path / "shown"
    hydra.utils.instantiate({"x": open_config(shown)})  # what a recursive build of the hyper-parameters does
    assert shown.exists()
    marker = tmp_path / "marker"
    ckpt["hyper_parameters"]["generator"]["mapping_kwargs"] = open_config(marker)
    torch.save(ckpt, tmp_path / "nested.ckpt")
    with pytest.raises(ValueError, match=r"nested.ckpt: model.generator: Hydra directives .* are refused"):
        load_model(tmp_path / "nested.ckpt")
    assert not marker.exists()


def test_foreign_target_in_hyper_parameters_is_refused(tmp_path):
    from experiments.evaluate import load_model
    from lightning_modules.voice2face import Voice2FaceGAN

    ckpt, _ = smoke_checkpoint(tmp_path)
    ckpt["hyper_parameters"]["encoder"] = {"_target_": "os.system", "command": "true"}
    torch.save(ckpt, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="'os.system' is not one of the project's networks"):
        load_model(tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="'os.system' is not one of the project's networks"):  # built directly
        Voice2FaceGAN(**ckpt["hyper_parameters"])


@pytest.mark.parametrize("force_unsafe", [False, True])
@pytest.mark.integration
def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch, force_unsafe):
    """weights_only everywhere, also when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks torch for the unsafe default."""
    from experiments.evaluate import build_datamodule, load_model
    from experiments.run import check_checkpoint
    from lightning_modules.encoder_pretrain import load_encoder_weights

    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    shown = tmp_path / "shown"
    torch.save({"x": Touch(shown)}, tmp_path / "show.ckpt")
    torch.load(tmp_path / "show.ckpt", weights_only=False)
    assert shown.exists()
    marker = tmp_path / "marker"
    ckpt, _ = smoke_checkpoint(tmp_path)
    ckpt["hyper_parameters"]["note"] = Touch(marker)
    ckpt["encoder"] = Touch(marker)
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, path)
    model = load_model(smoke_checkpoint(tmp_path)[1])
    for load in (
        load_model,
        build_datamodule,
        lambda p: check_checkpoint(str(p), model),
        lambda p: load_encoder_weights(model.encoder, p),
    ):
        with pytest.raises(Exception, match="pickled.ckpt"):
            load(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["inception", "vgg16", "facenet"])
@pytest.mark.integration
def test_pickled_code_in_metric_weights_never_runs(tmp_path, name):
    """torch-fidelity reads the Inception file with weights_only=False: such a file ran its code when FID was
    built. Every metric network's weights (weights_path or the hub cache) are refused unless they are tensors."""
    from lightning_modules.metrics.fid import FID
    from lightning_modules.metrics.identity import FaceNetEmbedder
    from lightning_modules.metrics.ppl import LPIPSDistance
    from lightning_modules.metrics.weights import MetricUnavailable

    build = {"inception": lambda p: FID(None, weights_path=p), "vgg16": LPIPSDistance, "facenet": FaceNetEmbedder}
    marker = tmp_path / "marker"
    path = tmp_path / f"{name}.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": Touch(marker)}, path)
    with pytest.raises(MetricUnavailable, match=rf"{path}: cannot be read as {name} weights .*never loaded"):
        build[name](str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # read the unsafe way, the file runs its code
    assert marker.exists()


def test_a_streaming_export_with_pickled_items_is_refused(tmp_path):
    from litdata import StreamingDataset

    from datamodules.streaming import _optimize, read_stream_meta

    marker = tmp_path / "marker"
    export = tmp_path / "export"
    _optimize(pickled_meta, [str(marker)], str(export / "meta"), "64MB", {}, False)
    assert json.loads((export / "meta" / "index.json").read_text())["config"]["data_format"] == ["pickle"]
    with pytest.raises(DataError, match=r"export/meta: items of format \['pickle'\] are refused"):
        read_stream_meta(str(export))
    assert not marker.exists()
    StreamingDataset(str(export / "meta"))[0]  # read the unsafe way, the item runs its code
    assert marker.exists()


def pickled_meta(marker: str):
    yield {"json": Touch(marker)}
