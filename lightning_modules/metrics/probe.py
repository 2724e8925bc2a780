"""A small face probe trained on the embedded corpus' real train-split faces.

One trunk, trained jointly to classify the train identities and to predict each attribute in
`attributes.csv`. Its 4·width-d pooled features are the face-embedding space of the identity metrics on
the corpus; its attribute heads give the attribute-recovery scores. Faces are read at 32 px so that a
probe trains in seconds on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.faces import normalize
from lightning_modules.metrics.settings import ProbeSettings

PROBE_RES = 32
PROBE_FORMAT = "voice2face-face-probe/1"  # the header's "format" in a probe file (save_probe)


@dataclass
class AttributeCodec:
    """Targets of the attribute heads: categorical -> class index, continuous -> standardised value."""

    kinds: dict[str, str]
    vocab: dict[str, list[str]] = field(default_factory=dict)  # categorical attribute -> sorted values
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # continuous attribute -> (mean, std)
    majority: dict[str, int] = field(default_factory=dict)  # categorical attribute -> most common train class

    @classmethod
    def fit(cls, kinds: dict[str, str], rows: list[dict]) -> AttributeCodec:
        codec = cls(dict(kinds))
        for name, kind in kinds.items():
            if kind == "categorical":
                values = [str(r[name]) for r in rows]
                codec.vocab[name] = sorted(set(values))
                codec.majority[name] = codec.vocab[name].index(max(codec.vocab[name], key=values.count))
            elif kind == "continuous":
                v = torch.tensor([float(r[name]) for r in rows], dtype=torch.float64)
                codec.stats[name] = (float(v.mean()), float(v.std(unbiased=False)) or 1.0)
            else:
                raise ValueError(f"attribute {name!r}: kind must be categorical or continuous, got {kind!r}")
        return codec

    def out_dims(self) -> dict[str, int]:
        return {n: len(self.vocab[n]) if k == "categorical" else 1 for n, k in self.kinds.items()}

    def encode(self, name: str, values: list) -> Tensor:
        """Targets for a list of raw values; an unseen category becomes −1 (never predicted)."""
        if self.kinds[name] == "categorical":
            index = {v: i for i, v in enumerate(self.vocab[name])}
            return torch.tensor([index.get(str(v), -1) for v in values])
        mean, std = self.stats[name]
        return torch.tensor([(float(v) - mean) / std for v in values], dtype=torch.float32)


class FaceProbe(nn.Module):
    def __init__(self, num_classes: int, heads: dict[str, int], continuous: tuple[str, ...] = (), width: int = 16):
        super().__init__()
        self.continuous = frozenset(continuous)  # heads regressing a standardised value (others: classes)
        self.trunk = nn.Sequential(  # 32 -> 16 -> 8 -> 4, then global average
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.embed_dim = 4 * width
        self.identity = nn.Linear(self.embed_dim, num_classes)
        self.heads = nn.ModuleDict({name: nn.Linear(self.embed_dim, d) for name, d in heads.items()})

    def embed(self, img: Tensor) -> Tensor:
        """[-1, 1] faces [N,3,S,S] -> features [N, 4·width]."""
        if img.shape[-1] != PROBE_RES:
            img = F.interpolate(img, size=(PROBE_RES, PROBE_RES), mode="area")
        return self.trunk(img).mean(dim=(2, 3))

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        emb = self.embed(img)
        return emb, self.identity(emb), {n: h(emb) for n, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, img: Tensor, batch_size: int = 256) -> tuple[Tensor, dict[str, Tensor]]:
        """Embeddings and head outputs (categorical: class index; continuous: standardised value)."""
        self.eval()
        embs, outs = [], []
        for chunk in img.split(batch_size):
            emb, _, heads = self(chunk.to(self.identity.weight.dtype))
            embs.append(emb)
            outs.append({n: o[:, 0] if n in self.continuous else o.argmax(1) for n, o in heads.items()})
        return torch.cat(embs), {n: torch.cat([o[n] for o in outs]) for n in self.heads}


def train_probe(
    faces: dict[str, Tensor],
    attributes: dict[str, dict] | None = None,
    kinds: dict[str, str] | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 16,
    seed: int = 0,
) -> tuple[FaceProbe, AttributeCodec | None]:
    """Train a probe on real faces {identity: uint8 [K,3,S,S]}; the sorted identities are its classes."""
    names = sorted(faces)
    if not names:
        raise ValueError("train_probe: no faces")
    images = torch.cat([normalize(faces[n]) for n in names])
    if images.shape[-1] != PROBE_RES:
        images = F.interpolate(images, size=(PROBE_RES, PROBE_RES), mode="area")
    labels = torch.cat([torch.full((len(faces[n]),), i) for i, n in enumerate(names)])
    codec, targets = None, {}
    if attributes is not None and kinds:
        missing = [n for n in names if n not in attributes]
        if missing:
            raise ValueError(f"train_probe: no attributes for identities {missing[:5]}")
        codec = AttributeCodec.fit(kinds, [attributes[n] for n in names])
        for attr in kinds:
            targets[attr] = codec.encode(attr, [attributes[n][attr] for n in names])[labels]
    continuous = tuple(a for a, k in (kinds or {}).items() if k == "continuous")
    # float64: in float32 the 300 Adam steps amplify the rounding of a box's own conv kernels and thread count
    # into another probe (features 50 % apart between 1 and 2 threads on one box), so fd_probe and its floor
    # differed from box to box; in float64 the same rounding stays far below the figures' last digit.
    with torch.random.fork_rng(devices=[]):  # seeded here, the training run's own random stream left as it was
        torch.manual_seed(seed)
        probe = FaceProbe(len(names), codec.out_dims() if codec else {}, continuous, width).double()
    images = images.double()
    targets = {k: v.double() if v.is_floating_point() else v for k, v in targets.items()}
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    probe.train()
    with torch.enable_grad():  # also when called from a no-grad evaluation (the in-training metrics)
        _fit(probe, opt, images, labels, targets, steps, batch_size, rng)
    return probe.eval(), codec


def _fit(probe, opt, images, labels, targets, steps, batch_size, rng):
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=rng)
        _, logits, heads = probe(images[idx])
        loss = F.cross_entropy(logits, labels[idx])
        for attr, out in heads.items():
            y = targets[attr][idx]
            loss = loss + (F.cross_entropy(out, y) if attr not in probe.continuous else F.mse_loss(out[:, 0], y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def save_probe(path: Path, probe: FaceProbe, codec: AttributeCodec | None, about: dict) -> None:
    """A probe as safetensors: its tensors, and in the header's metadata a JSON record of how to rebuild it (width,
    continuous heads, the attribute codec) and `about` (how and on what it was trained)."""
    from safetensors.torch import save_file

    header = {
        "format": PROBE_FORMAT,
        "width": probe.embed_dim // 4,
        "continuous": sorted(probe.continuous),
        "codec": asdict(codec) if codec is not None else None,
        "about": about,
    }
    tensors = {k: v.detach().contiguous() for k, v in probe.state_dict().items()}
    save_file(tensors, str(path), metadata={"voice2face": json.dumps(header, sort_keys=True)})


def load_probe_file(path: Path) -> tuple[FaceProbe, AttributeCodec | None, dict]:
    """(probe, codec, about) of a `save_probe` file, checked field by field; no code in the file runs (safetensors)."""
    from safetensors import SafetensorError, safe_open

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}: not a usable face probe file ({problem}); `make face-probe` writes one")

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise bad(str(err).splitlines()[0][:160]) from None
    try:
        header = json.loads(meta["voice2face"])
        assert isinstance(header, dict) and header.get("format") == PROBE_FORMAT, f"format is not {PROBE_FORMAT}"
        width, continuous, about = header["width"], header["continuous"], header["about"]
        assert isinstance(width, int) and 1 <= width <= 1024, "width must be an integer in 1..1024"
        assert isinstance(continuous, list) and all(isinstance(c, str) for c in continuous), "continuous: names"
        assert isinstance(about, dict), "about must be a mapping"
        raw = header["codec"]
        stats = None if raw is None else {k: tuple(v) for k, v in raw["stats"].items()}
        codec = None if raw is None else AttributeCodec(raw["kinds"], raw["vocab"], stats, raw["majority"])
        assert codec is None or all(isinstance(x, dict) for x in (codec.kinds, codec.vocab, codec.majority)), "codec"
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise bad(f"header: {err!r}"[:200]) from None
    if "identity.weight" not in tensors or tensors["identity.weight"].ndim != 2:
        raise bad("no 2-d identity.weight")
    heads = codec.out_dims() if codec is not None else {}
    probe = FaceProbe(tensors["identity.weight"].shape[0], heads, tuple(continuous), width)
    probe = probe.to(tensors["identity.weight"].dtype)
    expected = probe.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise bad(f"missing tensors {missing[:3]}, unexpected {extra[:3]}")
    shapes = {k: (list(v.shape), list(expected[k].shape)) for k, v in tensors.items()}
    wrong = [f"{k} {found} (needs {needed})" for k, (found, needed) in shapes.items() if found != needed]
    if wrong:
        raise bad(f"shapes: {', '.join(wrong[:3])}")
    probe.load_state_dict(tensors)
    broken = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if broken:
        raise bad(f"non-finite values in {broken[:3]}")
    return probe.eval(), codec, about


SHIPPED_PROBE = "face_probe_32"  # lightning_modules.weights: the probe trained once on the embedded corpus


def probe_for(datamodule, cfg: ProbeSettings) -> tuple[FaceProbe, AttributeCodec | None, str]:
    """(probe, codec, which) of an evaluation on `datamodule`; `which` is the line the metrics JSON keeps as `_probe`.

    cfg.weights: auto (the shipped probe where the datamodule is the embedded corpus in the crop the probe was
    trained on, as FID uses Inception's fixed weights; retrained on the datamodule's train split elsewhere, e.g. on
    real data) | shipped | retrain | a probe file (`save_probe`)."""
    from lightning_modules import weights  # here: the metrics read the weights folder only when asked to

    choice = str(cfg.weights)
    if hasattr(datamodule, "setup"):
        datamodule.setup()  # the attributes are read on setup
    kinds = dict(getattr(datamodule, "attribute_kinds", None) or {})
    if choice != "retrain" and (choice != "auto" or kinds):  # auto on real data (no attributes): retrained below
        shipped = choice in ("auto", "shipped")
        path = weights.resolve(SHIPPED_PROBE if shipped else choice)  # a shipped file is checked against its SHA-256
        probe, codec, about = load_probe_file(path)
        same_heads = codec is not None and codec.kinds == kinds
        align = getattr(datamodule, "hparams", {}).get("face_align", "arcface")
        if choice != "auto" or (same_heads and about.get("face_align") == align):
            if kinds and not same_heads:
                raise ValueError(
                    f"{path}: its attribute heads ({sorted(codec.kinds) if codec else 'none'}) are not this "
                    f"corpus' attributes ({sorted(kinds)}); set metrics.probe.weights=retrain"
                )
            digest = weights.recorded_sums()[path.name] if shipped else weights.sha256(path)
            return probe, codec, f"{path.name} sha256:{digest[:16]} ({about.get('trained_on', 'unknown data')})"
    faces = datamodule.faces("train")
    steps, batch, lr, width, seed = cfg.steps, cfg.batch_size, cfg.lr, cfg.width, cfg.seed
    attributes = getattr(datamodule, "attributes", None)
    probe, codec = train_probe(faces, attributes, kinds or None, steps, batch, lr, width, seed)
    which = f"retrained on this run's train split ({len(faces)} identities; {steps} steps, seed {seed}, float64)"
    return probe, codec, which
