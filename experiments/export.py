"""A trained generator for the public StyleGAN2 code:
`python -m experiments.export ckpt=PATH format=rosinality|nvlabs-state-dict out=FILE`, or the whole voice model
as a pickle-free folder: `python -m experiments.export ckpt=RUN.ckpt format=pretrained out=DIR`
(lightning_modules/io/model_folder.py: model.safetensors, config.json and the model card README.md).

`ckpt` is a voice2face training checkpoint (its G_ema) or any generator file that
`lightning_modules.io.legacy.load_generator` reads, so a rosinality .pt and an NVlabs state-dict export convert
into each other. The formats, and the public loader each fits:

    rosinality         {"g_ema", "latent_avg", "args"}: rosinality/stylegan2-pytorch's
                       `Generator(args["size"], args["latent"], args["n_mlp"], channel_multiplier=...,
                       lr_mlp=args["lr_mlp"]).load_state_dict(ckpt["g_ema"])`; `latent_avg` is the mean w.
    nvlabs-state-dict  {"state_dict", "init_kwargs"}: NVlabs stylegan2-ada-pytorch's
                       `training.networks.Generator(**init_kwargs).load_state_dict(state_dict)`.

rosinality sets channels from `channel_multiplier` and a fixed table, NVlabs from channel_base / channel_max:
a G whose channels fit no channel_base / channel_max is refused for NVlabs; for rosinality the tensors are
exact whatever the channels, and `args` holds the channel_multiplier only where one gives them (otherwise
stock rosinality code needs its `channels` table set to args["channels"]; our importer reads them off the
tensors). A G without noise inputs exports as zero noise strengths and buffers; what a format cannot express
is refused by name (lightning_modules/io/exporters.py). A per-pixel output bias (img_bias, the
from-scratch recipe's mean-face start) has no public place: its per-channel mean is folded into the top ToRGB
bias and the rest kept under extra keys that the public loaders ignore. `<out>.json`, the manifest, says which
loader fits and what the public code draws differently, measured on the check images. Under a W / W+ voice
head the export is the unconditional G (its own mapping and the synthesis): the head maps voices, which no
public loader has.

The file is written under a temporary name, read back by our importer and renamed to `out` only when its
images equal the G's bit for bit (fixed z, noise_mode="const", truncation 1) and its mean w equals the G's:
a refused or failed export leaves nothing at `out`. An existing `out` is refused unless overwrite=true.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from datamodules.cli_errors import one_line_errors
from datamodules.files import write_atomic
from experiments.model_card import model_card
from experiments.schema import check_command_config
from lightning_modules.io.exporters import export_nvlabs_state_dict, export_rosinality
from lightning_modules.io.legacy import (
    GENERATOR_FORMATS,
    IMG_BIAS_KEY,
    TORGB_BIAS_KEY,
    import_nvlabs,
    import_rosinality,
    load_generator,
)
from lightning_modules.io.model_folder import is_model_folder, write_model_folder
from lightning_modules.io.safe_load import refuse_unreadable
from lightning_modules.nets.latent import VoiceLatent, unconditional
from lightning_modules.voice2face_checkpoint import model_from_checkpoint, read_checkpoint

EXPORTERS = {"rosinality": export_rosinality, "nvlabs-state-dict": export_nvlabs_state_dict}
IMPORTERS = {"rosinality": import_rosinality, "nvlabs-state-dict": import_nvlabs}
PUBLIC_LOADERS = {
    "rosinality": "model.Generator(args['size'], args['latent'], args['n_mlp'], channel_multiplier=..., "
    "lr_mlp=args['lr_mlp']).load_state_dict(ckpt['g_ema'])",
    "nvlabs-state-dict": "training.networks.Generator(**ckpt['init_kwargs']).load_state_dict(ckpt['state_dict'])",
}
CHECK_IMAGES = 4  # images compared bit for bit after the round trip


def _is_training_checkpoint(path: Path) -> bool:
    try:  # mmap: only the dict's layout is read, not its tensors
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an NVlabs pickle, a .pt with argparse args, no torch file at all: load_generator names it
        return False
    return isinstance(data, dict) and isinstance(data.get("hyper_parameters"), dict) and "state_dict" in data


def read_generator(path: str | Path) -> torch.nn.Module:
    """G_ema of a voice2face checkpoint (as from_checkpoint builds it, a voice head included), else the G of any
    generator file load_generator reads; on the CPU."""
    path = Path(path)
    refuse_unreadable(path, f"{path}: no such file (ckpt=)", f"ckpt= names one of: {'; '.join(GENERATOR_FORMATS)}")
    if _is_training_checkpoint(path):
        return model_from_checkpoint(read_checkpoint(path), "cpu").G_ema
    return load_generator(path, impl="torch").eval()


def check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise IsADirectoryError(f"{out}: out= must name a file, and this is a folder")
    for path in (out, manifest_path(out)):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists; choose another out= or pass overwrite=true to replace it")


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


@torch.no_grad()
def _images(mapping, synthesis) -> torch.Tensor:
    device = mapping.w_avg.device
    z = torch.randn([CHECK_IMAGES, mapping.z_dim], generator=torch.Generator().manual_seed(0)).to(device)
    return synthesis(mapping(z), noise_mode="const").cpu()  # truncation 1: the images do not depend on w_avg


def export_generator(G, fmt: str, out: str | Path, source: str = "generator", overwrite: bool = False) -> dict:
    """Write `G` (its unconditional part under a voice head) to `out` in `fmt` (EXPORTERS), checked by reading
    the written file back; return what was written. `source` names G in errors (the file it came from)."""
    if fmt not in EXPORTERS:
        raise ValueError(f"export: format must be one of {list(EXPORTERS)}, got {fmt!r}")
    out = Path(out)
    check_out(out, overwrite)
    data = EXPORTERS[fmt](G, source)  # refuses what the format cannot express, before anything is written
    mapping, synthesis = unconditional(G), G.synthesis
    expected = _images(mapping, synthesis)
    if not torch.isfinite(expected).all():
        raise ValueError(f"{source}: its generator gives non-finite images (NaN or inf weights?); nothing exported")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:  # read back before the rename: a file that would not load is never written
        torch.save(data, tmp)
        back = load_generator(tmp, impl="torch")
        same_w_avg = torch.equal(back.mapping.w_avg, mapping.w_avg.cpu())
        if not (same_w_avg and torch.equal(_images(back.mapping, back.synthesis), expected)):
            raise ValueError(
                f"{out}: the {fmt} export does not read back as {source}'s generator ("
                + ("images" if same_w_avg else "mean w")
                + " differ); a bug in lightning_modules/io/exporters.py or legacy.py; nothing was written"
            )

    write_atomic(out, write)  # a full disk: a one-line error, and an earlier file of this name stays whole
    return data


@torch.no_grad()
def public_difference(data: dict, fmt: str, expected: torch.Tensor) -> dict | None:
    """How the public code's images differ from G's where the export keeps part of G beside the public keys
    (img_bias: exporters._with_img_bias): the file read without those keys, as the public loader reads it, on the
    check images. None where the public keys hold all of G."""
    if IMG_BIAS_KEY not in data:
        return None
    public = IMPORTERS[fmt]({k: v for k, v in data.items() if k not in (IMG_BIAS_KEY, TORGB_BIAS_KEY)}, impl="torch")
    diff = (_images(public.mapping, public.synthesis) - expected).abs()
    bias = data[IMG_BIAS_KEY]
    return {
        "what": "the per-pixel output bias (img_bias) minus its per-channel mean, which is folded into the top "
        f"ToRGB bias; the rest is kept under {IMG_BIAS_KEY!r} and {TORGB_BIAS_KEY!r}, which the public loader ignores",
        "images": CHECK_IMAGES,
        "max_abs": diff.max().item(),  # image units: [-1, 1] spans 255 levels
        "mean_abs": diff.mean().item(),
        "max_levels_of_255": diff.max().item() * 127.5,
        "residual_max_abs": (bias - bias.mean(dim=(1, 2), keepdim=True)).abs().max().item(),
    }


def write_manifest(out: Path, fmt: str, source: str, difference: dict | None) -> Path:
    """`<out>.json`: the format, its public loader, and what that loader draws differently from G."""
    manifest = {
        "file": out.name,
        "format": fmt,
        "source": source,
        "public_loader": PUBLIC_LOADERS[fmt],
        "read_back": f"bit for bit by voice2face's importer ({CHECK_IMAGES} images, noise_mode=const; mean w)",
        "public_code_draws": "the same images" if difference is None else difference,
    }
    path = manifest_path(out)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _check_folder_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: format=pretrained writes a folder, and this is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: already holds files; choose another out= or pass overwrite=true")
        if not is_model_folder(out):
            raise FileExistsError(f"{out}: overwrite=true replaces only a model folder, and this is not one")


@torch.no_grad()
def _voice_images(model) -> torch.Tensor:
    voices = torch.randn([CHECK_IMAGES, model.hparams.feature_dim, 300], generator=torch.Generator().manual_seed(0))
    return model.generate(voices.to(model.device), noise_mode="const").cpu()


def export_pretrained(ckpt: Path, out: Path, overwrite: bool = False) -> dict:
    """Write the model folder of the training checkpoint `ckpt` to `out` (lightning_modules.io.model_folder): built
    in a temporary folder beside it, read back as generate reads it, and renamed into place only when its faces
    for fixed voices equal the checkpoint's bit for bit."""
    _check_folder_out(out, overwrite)
    if not _is_training_checkpoint(ckpt):
        raise ValueError(f"{ckpt}: format=pretrained needs a voice2face training checkpoint (a run's last.ckpt)")
    state = read_checkpoint(ckpt)
    expected = _voice_images(model_from_checkpoint(state, "cpu"))
    written = {}

    def write(tmp: Path) -> None:  # checked before it replaces anything
        written.update(write_model_folder(state, tmp, model_card(state, ckpt)))
        back = _voice_images(model_from_checkpoint(read_checkpoint(tmp), "cpu"))
        if not torch.equal(back, expected):
            raise RuntimeError(f"{out}: the model folder does not give the checkpoint's faces; nothing was written")

    write_atomic(out, write)
    return written


def run(cfg: DictConfig) -> int:
    check_command_config(cfg, "export")
    out = Path(cfg.out)
    if cfg.format == "pretrained":
        tensors = export_pretrained(Path(cfg.ckpt), out, cfg.overwrite)
        size = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
        print(f"{out}: model.safetensors ({len(tensors)} tensors, {size:.1f} MiB), config.json, README.md")
        print(f"{out}: read back as generate reads it: the faces of {CHECK_IMAGES} voices bit for bit")
        return 0
    check_out(out, cfg.overwrite)  # before the checkpoint is read: a refusal costs nothing
    G = read_generator(cfg.ckpt)
    data = export_generator(G, cfg.format, out, source=str(cfg.ckpt), overwrite=cfg.overwrite)
    difference = public_difference(data, cfg.format, _images(unconditional(G), G.synthesis))
    manifest = write_manifest(out, cfg.format, str(cfg.ckpt), difference)
    if difference is not None:
        print(
            f"note: {cfg.ckpt}: the public code draws its images off by up to {difference['max_abs']:.4f} "
            f"({difference['max_levels_of_255']:.1f} of 255 levels; mean {difference['mean_abs']:.4f}): "
            f"{difference['what']} ({manifest})"
        )
    if isinstance(getattr(G, "mapping", None), VoiceLatent):
        print(
            f"note: {cfg.ckpt}: the voice head (latent_space={G.mapping.space}) is not part of the export: "
            "the file holds the G's own mapping and the synthesis, an unconditional generator"
        )
    if cfg.format == "rosinality":
        args = data["args"]
        multiplier = args.get("channel_multiplier")
        print(
            f"rosinality: Generator(size={args['size']}, style_dim={args['latent']}, n_mlp={args['n_mlp']}, "
            f"channel_multiplier={multiplier if multiplier is not None else '<none fits>'}, lr_mlp={args['lr_mlp']})"
            ".load_state_dict(ckpt['g_ema'])"
        )
        if multiplier is None:
            print(
                f"note: no rosinality channel_multiplier gives channels {args['channels']}: stock rosinality "
                "code needs its Generator.channels table set to args['channels'] before it loads the file"
            )
    else:
        print("NVlabs: training.networks.Generator(**ckpt['init_kwargs']).load_state_dict(ckpt['state_dict'])")
    print(f"{out}: written and read back bit for bit ({CHECK_IMAGES} images, noise_mode=const; mean w)")
    return 0


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
