"""Real faces into W+: `python -m experiments.project G=FILE images=DIR out=DIR`.

Each image is fitted with one w per layer of the generator (W+, [num_ws, w_dim]) under NVlabs' projector
objective (`lightning_modules/projector.py`: LPIPS where its VGG16 weights are local, else the face probe of
probe=, else a pixel + pyramid L2; the manifest says which). The images must already be aligned and cropped
the way G's training faces were: the projector only centre-crops each to a square and resizes it to
G.img_resolution (Lanczos, as NVlabs), it does not find or align faces.

Images are every .jpg/.jpeg/.png below images= (sorted; names starting with "." are skipped). The corpus layout
is `<images>/<identity>/<video>/<file>.jpg`: an image's identity is the first folder of its path below images=
(an image directly in images= has none). Written to out=:

    <relative path, "/" -> "__">.npy   W+ [num_ws, w_dim] float32 of each image (`id1/v/0001.jpg` ->
                                        `id1__v__0001.jpg.npy`); render it with G.synthesis(ws[None],
                                        noise_mode="const")
    identity_<identity>.npy            the mean of that identity's W+
    sheet.png                          targets (top row) over their projections (bottom row), first sheet_images
    manifest.json                      written last: G, distance, steps, per image its distance to the target

Every file is written under a temporary name and renamed, and the manifest comes last, so a folder that holds
the manifest is complete. An out folder that already holds files is refused unless overwrite=true. An image that
cannot be read is reported by name and reason, the others are projected, and the command exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from datamodules.cli_errors import one_line_errors
from datamodules.faces import FaceError, load_image, normalize
from datamodules.files import unreadable_reason, write_atomic, write_json
from datamodules.prepare import IMAGE_SUFFIXES, walk_files
from experiments.generate import check_out, save_png
from experiments.schema import check_command_config
from lightning_modules.io.legacy import load_generator
from lightning_modules.projector import make_distance, project, w_stats


def list_images(images: str | Path) -> list[tuple[Path, str]]:
    """(file, its path below `images` with "/") of every image below the folder `images` (or the one image)."""
    root = Path(images)
    if root.is_file():
        return [(root, root.name)]
    if not root.is_dir():
        reason = unreadable_reason(root)
        raise FileNotFoundError(f"{root}: no such folder or image" if reason == "no such file" else f"{root}: {reason}")
    found = sorted(
        (f.relative_to(root).as_posix(), f)
        for f in walk_files(root)
        if f.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in f.relative_to(root).parts)
    )
    if not found:
        raise FileNotFoundError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder or below it")
    return [(f, rel) for rel, f in found]


def identity_of(rel: str) -> str | None:
    """The identity of an image: the first folder of its path below images= (None directly in images=)."""
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else None


def output_names(rels: list[str]) -> dict[str, str]:
    """{relative path: its latent file name}; two images (or an image and an identity mean) that would write the
    same file are refused before any work."""
    names = {rel: rel.replace("/", "__") + ".npy" for rel in rels}
    owners: dict[str, list[str]] = {}
    for rel, name in names.items():
        owners.setdefault(name, []).append(rel)
    for ident in {identity_of(rel) for rel in rels} - {None}:
        owners.setdefault(f"identity_{ident}.npy", []).append(f"identity {ident}")
    clashes = {name: who for name, who in owners.items() if len(who) > 1}
    if clashes:
        name, who = next(iter(clashes.items()))
        raise ValueError(
            f"{len(clashes)} output file name(s) would be written twice ({name}: {who}); rename the images so that "
            "their paths with '/' read as '__' differ"
        )
    return names


def read_target(path: Path, size: int) -> torch.Tensor:
    """[3, size, size] in [-1, 1]: the centred square of the image, Lanczos-resized (NVlabs' projector does so)."""
    rgb = load_image(path)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(rgb[top : top + side, left : left + side]).resize((size, size), Image.LANCZOS)
    return normalize(torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1))


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, array)

    write_atomic(path, write)


def _read_batch(files, start: int, cfg: DictConfig, resolution: int, errors: dict) -> tuple[list, list, list]:
    """(relative names, target images, seeds) of the batch of `files` from `start`; an image that cannot be read
    is noted in `errors` by its file, and the others go on."""
    batch, targets, seeds = [], [], []
    for index, (file, rel) in enumerate(files[start : start + cfg.batch], start):
        try:
            targets.append(read_target(file, resolution))
            batch.append(rel)
            seeds.append(cfg.seed + index)  # the k-th image's draws, whatever batch it falls in
        except FaceError as err:  # corrupt, truncated, tiny, over-large
            errors[str(file)] = err.reason
    return batch, targets, seeds


def _manifest(cfg: DictConfig, G, about: dict, done: dict, identities: dict, errors: dict) -> dict:
    """manifest.json: the generator, the distance, the settings, and each image's and identity's latent."""
    return {
        "G": str(cfg.G),
        "img_resolution": G.img_resolution,
        "num_ws": G.num_ws,
        "w_dim": G.w_dim,
        "distance": about["distance"],
        "distance_note": about["distance_note"],
        "steps": cfg.steps,
        "seed": cfg.seed,
        "batch": cfg.batch,
        "latents": "W+ [num_ws, w_dim] float32 per image; distance: G.synthesis(ws, noise_mode='const') to the "
        "resized target; distance_fit: through the noise maps fitted with it (not saved)",
        "images": done,
        "identities": identities,
        "errors": errors,
        "sheet": about["sheet"],
    }


def run(cfg: DictConfig) -> int:
    check_command_config(cfg, "project")
    files = list_images(cfg.images)[: cfg.num_images]
    names = output_names([rel for _, rel in files])
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)
    G = load_generator(cfg.G)
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    distance, distance_name, distance_note = make_distance(cfg.distance, cfg.lpips_weights, cfg.probe)
    print(f"distance: {distance_name}: {distance_note}")
    G, distance = G.to(device).eval(), distance.to(device)
    stats = w_stats(G)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # present again only once this run is complete

    done, errors, sums, sheet = {}, {}, {}, []
    for start in range(0, len(files), cfg.batch):
        batch, targets, seeds = _read_batch(files, start, cfg, G.img_resolution, errors)
        if not batch:
            continue
        target = torch.stack(targets).to(device)
        result = project(G, target, distance, num_steps=cfg.steps, stats=stats, seeds=seeds)
        with torch.no_grad():  # as a user of the .npy renders it: G's own constant noise, not the fitted maps
            image = G.synthesis(result.ws.to(device), noise_mode="const")
            dist = distance(image, target).cpu()
        for i, rel in enumerate(batch):
            ws = result.ws[i].numpy().astype(np.float32)
            save_npy(out / names[rel], ws)
            ident = identity_of(rel)
            if ident is not None:
                total, count = sums.get(ident, (0.0, 0))
                sums[ident] = (total + ws.astype(np.float64), count + 1)
            done[rel] = {
                "latent": names[rel],
                "identity": ident,
                "distance": float(dist[i]),
                "distance_fit": float(result.distance[i]),
            }
        sheet += [(t, p) for t, p in zip(target.cpu(), image.cpu())][: cfg.sheet_images - len(sheet)]
        print(
            f"{len(done)}/{len(files)} projected (this batch's mean {distance_name} distance {float(dist.mean()):.4g})"
        )

    identities = {}
    for ident, (total, count) in sorted(sums.items()):
        save_npy(out / f"identity_{ident}.npy", (total / count).astype(np.float32))
        identities[ident] = {"latent": f"identity_{ident}.npy", "images": count}
    if sheet:
        grid = torch.cat([torch.stack([t for t, _ in sheet]), torch.stack([p for _, p in sheet])])
        save_png(((grid + 1) / 2).clamp(0, 1), out / "sheet.png", nrow=len(sheet), padding=2, pad_value=1.0)
    about = {"distance": distance_name, "distance_note": distance_note, "sheet": "sheet.png" if sheet else None}
    write_json(out / "manifest.json", _manifest(cfg, G, about, done, identities, errors))
    for file, reason in errors.items():
        print(f"error: {file}: {reason}", file=sys.stderr)
    print(f"{len(done)} W+ latent(s), {len(identities)} identity mean(s), sheet.png and manifest.json in {out}")
    return 1 if errors or not done else 0


@hydra.main(config_path="conf", config_name="project", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
