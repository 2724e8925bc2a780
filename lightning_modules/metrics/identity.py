"""Identity metrics (SF2F protocol): cosine to the identity's mean real face embedding, and voice -> face
retrieval Recall@k among galleries of identities, in a configurable face-embedding space."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.metrics.weights import MetricUnavailable, load_weights, read_weights, resolve_weights

FACES_EXTRA = "pip install -e '.[faces]' (dlib-bin 4 MB + face-recognition-models 100 MB, CC0; fully offline)"


class FaceNetEmbedder(nn.Module):
    """FaceNet InceptionResnetV1 (VGGFace2) from a local weights file; [-1, 1] faces -> unit 512-d."""

    def __init__(self, weights_path: str | None = None, download: bool = False):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        file = resolve_weights("facenet", weights_path, download)
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        state = read_weights(file, "facenet")
        load_weights(self.net, {k: v for k, v in state.items() if not k.startswith("logits.")}, file, "facenet")
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FaceNetEmbedder:
        return super().train(False)  # BatchNorm statistics are part of the pretrained model

    def forward(self, img: Tensor) -> Tensor:
        x = F.interpolate(img.float(), size=(160, 160), mode="bilinear", align_corners=False)
        return self.net(x * (127.5 / 128))  # facenet standardisation is (x·255 − 127.5) / 128


class DlibEmbedder:
    """dlib's ResNet face descriptor (128-d, face-recognition-models) on chips aligned by dlib's 5-point landmark
    model: an identity embedder that needs no download. [-1, 1] faces [N, 3, S, S] -> [N, 128] (not unit length;
    the identity metrics normalise). The faces here are aligned already, so the landmarks are looked for in the
    whole image rather than in a detector's box."""

    CHIP = 150  # dlib's chip side, which its ResNet was trained on

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise MetricUnavailable(f"dlib embedder: dlib is not installed; {FACES_EXTRA}") from None
        spec = importlib.util.find_spec("face_recognition_models")  # not imported: its __init__ needs pkg_resources
        if spec is None or not spec.submodule_search_locations:
            raise MetricUnavailable(f"dlib embedder: face-recognition-models is not installed; {FACES_EXTRA}")
        models = Path(spec.submodule_search_locations[0]) / "models"
        self.dlib = dlib
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, img: Tensor) -> Tensor:
        u8 = ((img.float().clamp(-1, 1) + 1) * 127.5).round()
        u8 = F.interpolate(u8, size=(self.CHIP, self.CHIP), mode="bilinear", antialias=True, align_corners=False)
        frames = np.ascontiguousarray(u8.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())  # [N,150,150,3]
        whole = self.dlib.rectangle(0, 0, self.CHIP - 1, self.CHIP - 1)
        chips = [self.dlib.get_face_chip(f, self.landmarks(f, whole), size=self.CHIP, padding=0.25) for f in frames]
        if not chips:
            return torch.zeros(0, 128)
        return torch.tensor(np.array(self.net.compute_face_descriptor(chips)), dtype=torch.float32)


def centroids(emb: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean unit embedding per label -> [num_classes, D]; every label must occur."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"no real faces for identity indices {torch.nonzero(counts == 0).flatten().tolist()}")
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype).index_add_(0, labels, F.normalize(emb, dim=1))
    return sums / counts[:, None]


def identity_cosine(gen_emb: Tensor, gen_labels: Tensor, centers: Tensor) -> float:
    """Mean cosine similarity of each generated face to its identity's mean real embedding."""
    return float(F.cosine_similarity(gen_emb, centers[gen_labels], dim=1).mean())


def retrieval_hits(
    query_emb: Tensor,
    query_labels: Tensor,
    centers: Tensor,
    gallery_size: int,
    ks: tuple[int, ...] = (1, 5, 10),
    repeats: int = 10,
    seed: int = 0,
) -> tuple[dict[int, Tensor], int]:
    """Per query, the fraction of its galleries in which the true identity ranks within the top k.

    Each query (a face generated from a voice) gets `repeats` random galleries: its own identity plus
    gallery_size − 1 others drawn without replacement. Ties count against the query. The gallery is clamped
    to the number of identities (then every gallery is the whole set); the size used is returned.
    Returns ({k: [N] hit rates}, gallery size used).
    """
    num_ids = centers.shape[0]
    g = min(gallery_size, num_ids)
    repeats = 1 if g == num_ids else repeats  # the whole set: every draw is the same gallery
    sim = F.normalize(query_emb.float(), dim=1) @ F.normalize(centers.float(), dim=1).T  # [N, C]
    rows = torch.arange(len(query_labels))
    rng = torch.Generator().manual_seed(seed)
    hits = {k: torch.zeros(len(query_labels), dtype=torch.float64) for k in ks}
    for _ in range(repeats):
        keys = torch.rand(sim.shape, generator=rng)
        keys[rows, query_labels] = -1.0  # the true identity sorts first, so it is always in the gallery
        gallery = keys.argsort(dim=1)[:, :g]  # [N, g]
        scores = sim.gather(1, gallery)
        rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # others scoring at least the true identity
        for k in ks:
            hits[k] += (rank < k).double()
    return {k: h / repeats for k, h in hits.items()}, g


def retrieval_recall(*args, **kwargs) -> tuple[dict[int, float], int]:
    """Recall@k of the true identity among `gallery_size` identities ranked by cosine similarity: the mean of
    `retrieval_hits` over queries, with its arguments. Returns ({k: recall}, gallery size used)."""
    hits, g = retrieval_hits(*args, **kwargs)
    return {k: float(h.mean()) for k, h in hits.items()}, g


def shuffled_recall(
    query_emb: Tensor, query_labels: Tensor, centers: Tensor, *args, permutations: int = 50, seed: int = 0, **kwargs
) -> dict[int, float]:
    """Recall@k with the queries' identities randomly permuted (seeded): what a generator that ignores the
    voice scores, faces that all look alike included (ties count against the query). The other arguments are
    `retrieval_recall`'s; the mean over `permutations` permutations is returned."""
    g = torch.Generator().manual_seed(seed + 1)
    total: dict[int, float] = {}
    for p in range(permutations):
        perm = torch.randperm(centers.shape[0], generator=g)
        recall, _ = retrieval_recall(query_emb, perm[query_labels], centers, *args, seed=seed + p, **kwargs)
        total = {k: total.get(k, 0.0) + r / permutations for k, r in recall.items()}
    return total
