"""Aligned faces of identities drawn apart from the voice–face corpus: the training set of the face prior.

The face prior plays the role FFHQ plays for VoxCeleb: a generator pretrained on many faces of other people.
Its identities come from `sample_identities(identities, seed)` with a seed the corpus never uses, so they share
no one with it (traits are continuous draws), and there are many more of them. Each face is rendered as the
corpus renders it, JPEG-compressed at the corpus' quality and aligned with the corpus' landmarks rule, so that
the prior sees the distribution the main job's `datamodules.faces` crops come from.

    faces = face_set(cache_dir, identities=2000, seed=1000, size=64)   # uint8 [N, 3, 64, 64], cached as .npy
"""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.faces import ffhq_transform, template, umeyama, warp
from datamodules.files import write_atomic
from datamodules.synthetic.corpus import GENERATOR_VERSION
from datamodules.synthetic.faces import render_face
from datamodules.synthetic.traits import sample_identities

JPEG_QUALITY = 92  # as the corpus writes its photos (datamodules.synthetic.corpus)
FACES_PER_IDENTITY = (8, 13)  # [low, high) images per identity, as in the corpus
DRAW = 120  # identities per draw: sample_identities names people uniquely from a few hundred names per split


def _identity_faces(job: tuple[dict, int, int, str]) -> np.ndarray:
    """uint8 [K, 3, size, size]: one identity's photos, rendered, JPEG round-tripped and aligned. Seeded by the
    identity alone (its face stream, as corpus._build_identity spawns it), so workers do not change the output."""
    traits, identity_seed, size, align = job
    face_rng = np.random.default_rng(np.random.SeedSequence(identity_seed).spawn(2)[1])
    return np.stack(
        [aligned_photo(traits, face_rng, size, align) for _ in range(face_rng.integers(*FACES_PER_IDENTITY))]
    )


def aligned_photo(traits: dict, rng: np.random.Generator, size: int, align: str) -> np.ndarray:
    """uint8 [3, size, size]: one photo of a person with `traits` (its pose, light and clothes drawn from `rng`),
    JPEG round-tripped at the corpus' quality and cropped by the corpus' landmarks rule (`align`: arcface | ffhq)."""
    image, points = render_face(traits, rng)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    photo = np.array(Image.open(buffer).convert("RGB"))  # writable: torch.from_numpy warns on a read-only one
    M = ffhq_transform(points, size) if align == "ffhq" else umeyama(points, template(size))
    return warp(photo, M, size)


def face_set_people(identities: int, seed: int) -> list:
    """The face-bearing identities of draws of up to DRAW identities (`identities` in all), the k-th with seed
    `seed * 10_000 + k` (never a corpus' small seed)."""
    sizes = [min(DRAW, identities - start) for start in range(0, identities, DRAW)]
    return [p for k, n in enumerate(sizes) for p in sample_identities(n, seed * 10_000 + k) if p.has_face]


def render_face_set(identities: int, seed: int, size: int = 64, align: str = "arcface", workers: int = 2):
    """(faces uint8 [N, 3, size, size], identity index [N]) of every person of `face_set_people`."""
    jobs = [(p.traits, p.seed, size, align) for p in face_set_people(identities, seed)]
    if workers == 1:
        parts = [_identity_faces(job) for job in jobs]
    else:  # spawn, as the corpus does: workers start clean whatever threads the caller runs
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_identity_faces, jobs, chunksize=8)
    labels = np.concatenate([np.full(len(part), i) for i, part in enumerate(parts)])
    return np.concatenate(parts), labels


def face_set(cache_dir, identities: int, seed: int, size: int = 64, align: str = "arcface", workers: int = 2):
    """`render_face_set`, cached in `cache_dir` under a name holding every argument and the renderer's version."""
    path = Path(cache_dir) / f"faceset-v{GENERATOR_VERSION}-n{identities}-s{seed}-{size}px-{align}.npz"
    if not path.is_file():
        faces, labels = render_face_set(identities, seed, size, align, workers)
        path.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a temporary name
                np.savez(f, faces=faces, labels=labels)

        write_atomic(path, save)
    with np.load(path) as data:
        faces, labels = data["faces"], data["labels"]
    if faces.ndim != 4 or faces.shape[1:] != (3, size, size) or len(labels) != len(faces):
        raise ValueError(f"{path}: holds faces {faces.shape} and {labels.shape} labels, not [N, 3, {size}, {size}]")
    return faces, labels
