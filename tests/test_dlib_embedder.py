"""metrics.identity.embedder=dlib: dlib's offline face descriptor (the optional `faces` extra)."""

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("dlib", reason="dlib not installed: pip install -e '.[faces]' (optional extra)")
if importlib.util.find_spec("face_recognition_models") is None:  # not imported: its __init__ needs pkg_resources
    pytest.skip("face-recognition-models not installed: pip install -e '.[faces]'", allow_module_level=True)

from datamodules.faces import normalize, template, umeyama, warp  # noqa: E402
from datamodules.synthetic.faces import render_face  # noqa: E402
from datamodules.synthetic.traits import sample_identities  # noqa: E402
from lightning_modules.metrics.families import face_embedder  # noqa: E402
from lightning_modules.metrics.identity import DlibEmbedder  # noqa: E402


def aligned_faces(identities: int, per_identity: int, size: int = 64):
    """Embedded-corpus faces of a few identities, aligned as the shards store them: ([-1, 1] [N,3,S,S], labels)."""
    faces, labels = [], []
    for k, ident in enumerate(sample_identities(12, seed=0)[:identities]):
        rng = np.random.default_rng(k)
        for _ in range(per_identity):
            image, points = render_face(ident.traits, rng)
            faces.append(torch.from_numpy(warp(image, umeyama(points, template(size)), size)))
            labels.append(k)
    return normalize(torch.stack(faces)), torch.tensor(labels)


def test_dlib_descriptors_tell_identities_apart_offline():
    faces, labels = aligned_faces(4, 3)
    emb = DlibEmbedder()(faces)
    assert emb.shape == (12, 128) and torch.isfinite(emb).all()
    assert torch.equal(emb, DlibEmbedder()(faces))  # deterministic
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None]
    off = ~torch.eye(12, dtype=torch.bool)
    assert dist[same & off].mean() < dist[~same].mean()  # measured: 0.35 against 0.55 on the corpus' faces


def test_auto_uses_dlib_where_facenet_weights_are_missing(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty_hub"))
    try:
        used, embed = face_embedder("auto", None, False, torch.device("cpu"))
    finally:
        torch.hub.set_dir(old)
    assert used == "dlib" and embed(aligned_faces(1, 2)[0]).shape == (2, 128)
