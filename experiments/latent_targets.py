"""The training speakers' faces in W or W+ of a generator: `python -m experiments.latent_targets [G=...] [out=FILE]`
(`make latent-targets`).

Every face of the data's `split` (the train split: the targets must not see a speaker the run is evaluated on), as
the data module aligns it for training, is projected into G by NVlabs' projector objective
(`lightning_modules.projector`), in W (one w for every layer: space=w, for a voice with one w) or W+, and each
identity's target is the mean of its faces' ws, in W+ layout. `model.latent_weight`
pulls the voice's ws toward its speaker's target (`model.latent_targets=FILE`, or the shipped name
`face_prior_64_targets`). The distance is a pixel + pyramid L2 by default, not the face probe's features: the probe
is the instrument fd_probe and the attribute scores are measured with, and targets fitted in it would teach the
model that instrument.

Written to out= as safetensors (one [num_ws, w_dim] float32 tensor per identity, named by it; its metadata records
G's SHA-256, the settings and a digest of the projected faces) and beside it `<out stem>_sheet.png`: a real face of
the first identities over its target drawn by G.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from torchvision.utils import save_image

from datamodules.cli_errors import one_line_errors
from datamodules.faces import faces_sha256, normalize
from datamodules.files import write_atomic
from experiments.schema import check_command_config, check_values
from lightning_modules.io.legacy import load_generator
from lightning_modules.projector import make_distance, project_each
from lightning_modules.weights import file_of, sha256


def identity_means(G, faces: dict[str, torch.Tensor], distance, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """{identity: mean W+ [num_ws, w_dim]} of its faces (uint8 [K, 3, S, S]), each face projected in cfg.space (w:
    one w repeated over the layers); the k-th face overall (identities sorted) draws its projection noise from
    seed + k, whatever batch it falls in."""
    names = sorted(faces)
    owner = [name for name in names for _ in range(len(faces[name]))]
    images = normalize(torch.cat([faces[name] for name in names]))  # [N, 3, S, S] in [-1, 1]
    how = dict(num_steps=cfg.steps, batch=cfg.batch, seed=cfg.seed, space=cfg.space)
    ws = project_each(G, images, distance, **how, progress=lambda n: print(f"{n}/{len(images)} faces projected"))
    sums = {name: 0.0 for name in names}
    for name, w in zip(owner, ws.double()):
        sums[name] = sums[name] + w
    return {name: (sums[name] / len(faces[name])).float().contiguous() for name in names}


def save_sheet(G, faces: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], path: Path, count: int = 16):
    """A real face of the first `count` identities (top row) over its target drawn by G (bottom row)."""
    names = sorted(targets)[:count]
    real = normalize(torch.stack([faces[name][0] for name in names]))
    with torch.no_grad():
        drawn = G.synthesis(torch.stack([targets[name] for name in names]), noise_mode="const")
    write_atomic(path, lambda tmp: save_image((torch.cat([real, drawn]) + 1) / 2, tmp, format="png", nrow=len(names)))


def run(cfg: DictConfig) -> Path:
    check_command_config(cfg, "latent_targets")
    check_values(cfg, ["data"])
    torch.set_num_threads(cfg.threads)
    G = load_generator(cfg.G).eval()
    if G.img_resolution != cfg.data.face_size:
        raise ValueError(
            f"{cfg.G}: a {G.img_resolution} px generator, but data.face_size is {cfg.data.face_size}: project "
            "faces at the generator's resolution"
        )
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    faces = datamodule.faces(cfg.split)
    distance, distance_name, distance_note = make_distance(cfg.distance, cfg.lpips_weights, None)
    print(f"distance: {distance_name}: {distance_note}")
    targets = identity_means(G, faces, distance, cfg)
    about = {
        "what": f"mean W+ of each {cfg.split}-split identity's faces, projected into {cfg.space} of G "
        "(experiments.latent_targets)",
        "G": Path(str(cfg.G)).name,
        "G_sha256": sha256(file_of(cfg.G)),
        "num_ws": str(G.num_ws),
        "w_dim": str(G.w_dim),
        "split": cfg.split,
        "corpus": json.dumps(dict(cfg.data.corpus)) if cfg.data.get("corpus") else "",
        "faces": json.dumps({name: len(faces[name]) for name in sorted(faces)}),
        "faces_sha256": faces_sha256(faces),
        "projection": json.dumps(
            {"space": cfg.space, "steps": cfg.steps, "batch": cfg.batch, "seed": cfg.seed, "distance": distance_name}
        ),
        "torch": torch.__version__,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: save_file(targets, str(tmp), metadata=about))
    save_sheet(G, faces, targets, out.with_name(f"{out.stem}_sheet.png"))
    print(f"latent targets: {out} ({len(targets)} identities, {sum(len(f) for f in faces.values())} faces)")
    return out


@hydra.main(config_path="conf", config_name="latent_targets", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
