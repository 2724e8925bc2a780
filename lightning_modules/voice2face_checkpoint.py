"""A voice2face checkpoint (or model folder) read as data, and the model built from it for inference.

state = read_checkpoint(path)            # weights_only / safetensors; the networks' configs checked
model = model_from_checkpoint(state)     # built as Lightning's load_from_checkpoint builds it, in eval mode
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub.constants import CONFIG_NAME

from lightning_modules.io.build import check_arguments, check_network_config
from lightning_modules.io.model_folder import read_model_folder
from lightning_modules.io.safe_load import load_data, refuse_unreadable
from lightning_modules.io.state_dict import compare_state_dict
from lightning_modules.voice2face import CHECKPOINT_FORMAT, ENCODER_MODES, Voice2FaceGAN


def read_checkpoint(ckpt: str | Path) -> dict:
    """A voice2face training checkpoint, or a model folder (lightning_modules.io.model_folder), read once as data
    (weights_only; safetensors), its networks' configs checked before
    anything is built from them (`model_from_checkpoint` builds the model, the datamodule hyper-parameters
    give the voice pipeline)."""
    path = Path(ckpt)
    if path.is_dir() and (path / CONFIG_NAME).is_file():  # any other folder is refused below, by what it is
        state = read_model_folder(path)
    else:
        refuse_unreadable(
            path,
            f"{path}: checkpoint not found (ckpt= must name a .ckpt written by training)",
            "ckpt= must name a .ckpt written by training (a run's checkpoints/last.ckpt) or a model folder "
            "(experiments.export format=pretrained)",
        )
        state = load_data(path, "a voice2face checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a voice2face training checkpoint (no hyper_parameters / state_dict)")
    written = state.get("voice2face_format", CHECKPOINT_FORMAT)  # model folders before it kept none
    if written != CHECKPOINT_FORMAT:  # its networks' paths (`_target_`) are another version's
        raise ValueError(
            f"{path}: written by another version of voice2face (checkpoint format {written}, this code reads "
            f"{CHECKPOINT_FORMAT}); use the version that wrote it"
        )
    for part in ("encoder", "generator", "discriminator"):
        check_network_config(state["hyper_parameters"].get(part), f"{path}: model.{part}")
    check_arguments(Voice2FaceGAN, state["hyper_parameters"], f"{path}: hyper_parameters")
    mode = state["hyper_parameters"].get("encoder_mode", "joint")
    if mode not in ENCODER_MODES:  # from_checkpoint builds every checkpoint as joint, so __init__ cannot check it
        raise ValueError(
            f"{path}: hyper_parameters: encoder_mode {mode!r} is not one of {ENCODER_MODES} (a checkpoint of "
            "another version?); use the version that wrote it"
        )
    return state


def model_from_checkpoint(state: dict, device: str | torch.device = "cpu") -> Voice2FaceGAN:
    """The model of a checkpoint read by `read_checkpoint`, in eval mode on `device` ("auto": CUDA where there
    is one), built as Lightning's load_from_checkpoint builds it: the stored hyper-parameters, then
    on_load_checkpoint, then the weights, strictly."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device}: this machine has no CUDA GPU that torch can use; pass device=cpu")
    hparams = state["hyper_parameters"]
    # The checkpoint's weights include the encoder's, so its stage-1 file (encoder_ckpt) is not read: it need
    # not exist here (a run folder moved or handed over). Built as a joint encoder, then given its mode back.
    # Likewise its generator_init (the stored generator/discriminator configs already are the file's) and
    # the files of the training-only losses.
    files = {"encoder_ckpt": None, "generator_init": None, "latent_weight": 0.0, "perceptual_weight": 0.0}
    files["generator_train"] = "finetune"  # frozen needs the file; what it froze is in the weights already
    model = Voice2FaceGAN(**{**hparams, "encoder_mode": "joint", **files})
    model.hparams.update({k: hparams.get(k, v) for k, v in files.items()})
    mode = hparams.get("encoder_mode", "joint")
    model.hparams.update(encoder_mode=mode)
    model.encoder.requires_grad_(model.hparams.encoder_mode != "frozen")
    model.on_load_checkpoint(state)
    parts = state.get("voice2face_parts")
    if parts is None:
        model.load_state_dict(state["state_dict"], strict=True)
    else:  # a model folder: the inference networks, each of them whole
        own = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(parts))}
        compare_state_dict(own, state["state_dict"], "the model folder's model.safetensors")
        model.load_state_dict(state["state_dict"], strict=False)
    return model.to(device).eval()


def check_features(model: Voice2FaceGAN, n_features: int, where: str) -> None:
    """Refuse a voice pipeline whose frames are not what the encoder was trained on (e.g. MFCC + deltas under
    data_overrides for a log-mel model), before any audio is read."""
    if n_features != model.hparams.feature_dim:
        raise ValueError(
            f"{where}: gives {n_features} features a frame, but this model's encoder was trained on "
            f"{model.hparams.feature_dim}; drop data_overrides.features (the checkpoint's own are used)"
        )
