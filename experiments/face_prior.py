"""Train the face prior: `python -m experiments.face_prior [total_kimg=...] [out=DIR]` (`make face-prior`).

An unconditional StyleGAN2 (lightning_modules.face_prior) on the faces of `datamodules.synthetic.face_set`:
identities drawn with their own seed, none of them in the voice–face corpus, as FFHQ holds other people than
VoxCeleb. Every `snapshot_kimg` it writes `last.pt` (resumable: rerun the same command), a grid of G_ema's faces
and one line of `curve.csv`: fd_probe of G_ema's faces against real faces in the face probe's space, beside the
real-vs-real floor (lightning_modules.metrics.quality). The real faces are `reference`: by default the renderer's
faces of a few hundred people in neither the face set nor the corpus (a corpus split of 15 people ranked snapshots
by how well they matched those 15: docs/face_prior.md). At the end it writes the prior
in NVlabs' state-dict layout, G and D (`lightning_modules.io.exporters.export_face_prior`), which `model.generator_init`
reads.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from datamodules.cli_errors import one_line_errors
from datamodules.faces import normalize
from datamodules.files import write_atomic
from datamodules.synthetic.face_set import face_set
from experiments.schema import check_command_config, check_values
from lightning_modules import weights
from lightning_modules.face_prior import FacePriorTrainer
from lightning_modules.io.exporters import export_face_prior
from lightning_modules.io.legacy import load_pretrained
from lightning_modules.metrics.probe import probe_for
from lightning_modules.metrics.quality import probe_quality
from lightning_modules.metrics.settings import ProbeSettings

CURVE_COLUMNS = (
    "kimg",
    "seconds",
    "img_per_s",
    "fd_probe",
    "fd_probe_real",
    "fd_probe_others",
    "kid_probe",
    "kid_probe_real",
    "n",
    "n_reference",
    "reference",
)


class ProbeScore:
    """fd_probe of unconditional faces against a set of real faces, in the main job's evaluation probe (the shipped
    one on the embedded corpus: metrics.probe.weights), beside what real faces of other people score there."""

    def __init__(self, datamodule, probe: ProbeSettings, faces, labels, name: str, others=None):
        # faces: uint8 [M, 3, S, S] real faces; labels: [M] their identities (the floor compares halves of people);
        # others: uint8 real faces of people not among them, or None (not scored)
        self.probe, _, self.which = probe_for(datamodule, probe)
        self.name = name
        self.labels = labels
        self.real_feats = self.features(faces)
        self.others = None if others is None else self.features(others)
        self._others_fd = {}  # n -> other_people_fd: the same for every snapshot scoring n faces

    def features(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.probe.predict(normalize(chunk))[0] for chunk in faces.split(500)])

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor) -> dict:
        """faces in [-1, 1] [N, 3, S, S] -> fd_probe, fd_probe/real, kid_probe, kid_probe/real, n, n_reference, and
        fd_probe/others where other people's faces were given."""
        quantised = normalize((faces.clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8))
        q = probe_quality(self.probe.predict(quantised)[0], self.real_feats, self.labels)
        if self.others is not None:
            n = len(faces)
            if n not in self._others_fd:
                self._others_fd[n] = other_people_fd(self.others, self.real_feats, self.labels, n)
            q["fd_probe/others"] = self._others_fd[n]
        return q


def other_people_fd(others: torch.Tensor, real: torch.Tensor, labels: torch.Tensor, n: int, draws: int = 5) -> float:
    """fd_probe of `n` of the features `others` (real faces of other people) against `real` (people `labels`),
    scored as G's n faces are, the mean of `draws` seeded subsets: what a prior that drew real people would score.
    fd_probe/real compares two halves of the reference's own people's photos, which faces of other people, and so
    any unconditional G, cannot reach against a set of few people."""
    picks = [torch.randperm(len(others), generator=torch.Generator().manual_seed(k))[:n] for k in range(draws)]
    return sum(probe_quality(others[i], real, labels)["fd_probe"] for i in picks) / draws


def reference_faces(cfg: DictConfig, datamodule) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The real faces the curve scores G_ema against, [M, 3, S, S] uint8, their identities [M], and the name the
    curve records. `faces`: the renderer's faces of `reference.identities` people drawn with a seed of their own (in
    neither the face set nor the corpus); `corpus`: the corpus' `reference.split`."""
    ref = cfg.reference
    if ref.source == "corpus":
        real = datamodule.faces(ref.split)
        names = sorted(real)
        labels = torch.cat([torch.full((len(real[n]),), i) for i, n in enumerate(names)])
        return torch.cat([real[n] for n in names]), labels, f"corpus:{ref.split}"
    if ref.seed == cfg.faces.seed:
        raise ValueError(
            f"reference.seed={ref.seed} is faces.seed: the curve would score G against the people it trains on; "
            "give the reference a seed of its own"
        )
    faces, labels = _rendered(cfg, ref.seed)
    return faces, labels, f"faces:{ref.identities}@{ref.seed}"


def other_faces(cfg: DictConfig) -> torch.Tensor | None:
    """Real faces of `reference.identities` people drawn with `reference.others_seed`: in neither the reference, the
    face set nor the corpus. uint8 [K, 3, S, S], or None where others_seed is null."""
    ref = cfg.reference
    if ref.others_seed is None:
        return None
    if ref.others_seed in (ref.seed, cfg.faces.seed):
        raise ValueError(
            f"reference.others_seed={ref.others_seed} is reference.seed or faces.seed: other people's faces must be "
            "drawn with a seed of their own"
        )
    return _rendered(cfg, ref.others_seed)[0]


def _rendered(cfg: DictConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's faces of `reference.identities` people drawn with `seed`, aligned as the face set's, cached."""
    faces, labels = face_set(
        cfg.paths.cache_dir, cfg.reference.identities, seed, cfg.faces.size, cfg.faces.align, workers=cfg.workers
    )
    return torch.from_numpy(faces), torch.from_numpy(labels)


@torch.no_grad()
def draw(G, num: int, seed: int, batch: int = 250) -> torch.Tensor:
    """`num` faces of G from fixed latents (the same at every snapshot, on any device), noise_mode const, on the
    CPU."""
    z = torch.randn([num, G.z_dim], generator=torch.Generator().manual_seed(seed))
    device = next(G.parameters()).device
    return torch.cat([G(chunk.to(device), noise_mode="const").cpu() for chunk in z.split(batch)])


def real_batch(faces: np.ndarray, step: int, batch_size: int, seed: int, xflip: bool) -> torch.Tensor:
    """The batch of step `step`: drawn with a generator seeded by (seed, step), so a resumed run draws the
    same batches as an unbroken one; mirrored with probability 1/2 under `xflip`."""
    rng = np.random.default_rng([seed, step])
    x = normalize(torch.from_numpy(faces[rng.integers(len(faces), size=batch_size)]))
    if xflip:
        flip = torch.from_numpy(rng.random(batch_size) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def append_row(path: Path, row: dict) -> None:
    """One row of curve.csv; a curve written before a column was added is first rewritten with it (blank there)."""
    header, rows = None, []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = tuple(reader.fieldnames or ()), list(reader)
    rewrite = header != CURVE_COLUMNS
    with open(path, "w" if rewrite else "a", newline="") as f:
        w = csv.DictWriter(f, CURVE_COLUMNS)
        if rewrite:
            w.writeheader()
        for r in [*rows, row] if rewrite else [row]:
            w.writerow({k: r.get(k, "") for k in CURVE_COLUMNS})


def curve_rows(csv_path: Path) -> list[dict]:
    """The scored rows of curve.csv measured against the same reference as its last row: a curve continued against
    other faces (or copied from a prior file scored against other faces) is not one curve."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fd_probe"]]
    return [r for r in rows if r.get("reference") == rows[-1].get("reference")] if rows else []


def plot_curve(csv_path: Path, out: Path) -> Path:
    """fd_probe of the prior's faces against kimg beside the real-vs-real floor (log scale), from curve.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve_rows(csv_path)
    kimg = [float(r["kimg"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(kimg, [float(r["fd_probe"]) for r in rows], marker="o", label="face prior (G_ema)")
    others = [(k, float(r["fd_probe_others"])) for k, r in zip(kimg, rows) if r.get("fd_probe_others")]
    if others:  # a curve begun before this line was scored draws it from where it was
        ax.plot(*zip(*others), "g-.", label="real faces of other people")
    ax.plot(kimg, [float(r["fd_probe_real"]) for r in rows], "k--", label="real vs real (floor)")
    ax.plot(kimg, [1.5 * float(r["fd_probe_real"]) for r in rows], "k:", label="1.5 × floor")
    ax.set(
        xlabel="kimg",
        ylabel="fd_probe (log)",
        yscale="log",
        title=f"face prior against {rows[-1]['reference']}, n={rows[-1]['n']}",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def build_trainer(cfg: DictConfig) -> FacePriorTrainer:
    """The G, D and optimisers of the config's network and training sections, its interpolations resolved
    (r1_gamma is NVlabs' rule of the face size and batch)."""
    network, training = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("network", "training"))
    return FacePriorTrainer(img_resolution=cfg.faces.size, device=cfg.device, **network, **training)


def train(cfg: DictConfig) -> Path:
    check_command_config(cfg, "face_prior")
    check_values(cfg, ["data"])
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    faces, _ = face_set(cfg.paths.cache_dir, **cfg.faces, workers=cfg.workers)
    where = f"{cfg.faces.identities} identities (seed {cfg.faces.seed})"
    print(f"face prior: {len(faces)} faces of {where} at {faces.shape[-1]} px", flush=True)
    datamodule = hydra.utils.instantiate(cfg.data, face_size=cfg.faces.size, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    faces_ref, labels_ref, name = reference_faces(cfg, datamodule)
    probe = ProbeSettings.of(cfg.metrics.probe, "metrics.probe")
    score = ProbeScore(datamodule, probe, faces_ref, labels_ref, name, others=other_faces(cfg))
    print(f"curve: fd_probe against {name}, {len(faces_ref)} faces of {len(labels_ref.unique())} people", flush=True)

    torch.manual_seed(cfg.seed)
    trainer = build_trainer(cfg)
    last = out / "last.pt"
    seconds = _begin(trainer, cfg, out, score)
    total = int(cfg.total_kimg * 1000)
    next_snapshot = (trainer.cur_nimg // int(cfg.snapshot_kimg * 1000) + 1) * int(cfg.snapshot_kimg * 1000)
    tick = time.perf_counter()
    tick_nimg = trainer.cur_nimg
    while trainer.cur_nimg < total:
        trainer.step(real_batch(faces, trainer.batch_idx, trainer.batch_size, cfg.seed, cfg.xflip))
        if trainer.cur_nimg >= next_snapshot or trainer.cur_nimg >= total:
            elapsed = time.perf_counter() - tick
            seconds += elapsed
            row = {
                "kimg": trainer.cur_nimg / 1000,
                "seconds": round(seconds, 1),
                "img_per_s": round((trainer.cur_nimg - tick_nimg) / elapsed, 2),
                **_scores(score, trainer, cfg),
            }
            append_row(out / "curve.csv", row)
            plot_curve(out / "curve.csv", out / "curve.png")
            print(
                " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True
            )
            state = {"trainer": trainer.state_dict(), "rng": torch.get_rng_state(), "seconds": seconds}
            if trainer.device.type == "cuda":  # the path-length noise is drawn there
                state["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
            write_atomic(last, lambda p, s=state: torch.save(s, p))
            next_snapshot += int(cfg.snapshot_kimg * 1000)
            tick, tick_nimg = time.perf_counter(), trainer.cur_nimg
    grid = draw(trainer.G_ema, 64, cfg.seed + 1)
    save_image(grid * 0.5 + 0.5, out / "samples_final.png", nrow=8, padding=1)
    prior = out / "face_prior.pt"
    with open(out / "curve.csv", newline="") as f:
        training = {"kimg": trainer.cur_nimg / 1000, "seconds": seconds, "curve": list(csv.DictReader(f))}
    # export_face_prior writes CPU copies of the tensors, whatever device they trained on
    write_atomic(prior, lambda p: torch.save(export_face_prior(trainer.G_ema, trainer.D, training=training), p))
    print(f"face prior: {prior} ({prior.stat().st_size / 2**20:.1f} MiB), curve {out / 'curve.csv'}")
    return prior


def _begin(trainer: FacePriorTrainer, cfg: DictConfig, out: Path, score: ProbeScore) -> float:
    """Where training starts, and its seconds so far: the folder's last.pt (bit for bit), else `init`, else
    scratch. The start is scored (a curve row) unless the curve's last row already scored it against the same faces."""
    last, curve = out / "last.pt", out / "curve.csv"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
        print(f"resumed {last} at {trainer.cur_nimg / 1000:.1f} kimg")
        seconds = state["seconds"]
    elif cfg.init:  # a prior file (the shipped one): G and G_ema from its G, D from its D, fresh Adam moments
        seconds = warm_start(trainer, cfg.init, curve)
        print(f"started from {cfg.init} at {trainer.cur_nimg / 1000:.1f} kimg (G, D; Adam moments anew)")
    else:
        seconds = 0.0
    scored = curve_rows(curve) if curve.is_file() and (last.is_file() or cfg.init) else []
    if not scored or scored[-1].get("reference") != score.name:
        append_row(
            curve, {"kimg": trainer.cur_nimg / 1000, "seconds": round(seconds, 1), **_scores(score, trainer, cfg)}
        )
    return seconds


def warm_start(trainer: FacePriorTrainer, init: str, curve: Path) -> float:
    """Continue from a prior file (export_face_prior): its G as G and G_ema, its D, its kimg and curve. Adam's
    moments are not in the file, so this is a warm start, not last.pt's exact resume. Returns its seconds."""
    G, _, trunk = load_pretrained(init)
    training = torch.load(weights.resolve(init), map_location="cpu", weights_only=True).get("training", {})
    state = G.state_dict()
    # NVlabs' layout keeps noise buffers even for a G without noise inputs (zero strengths): drop exactly those
    extra = set(state) - set(trainer.G.state_dict())
    noise_free = all(k.endswith("noise_const") or (k.endswith("noise_strength") and not state[k].any()) for k in extra)
    if not noise_free:
        raise ValueError(f"{init}: its G does not fit network.* of this run (extra weights {sorted(extra)[:3]})")
    state = {k: v for k, v in state.items() if k not in extra}
    trainer.G.load_state_dict(state)
    trainer.G_ema.load_state_dict(state)
    trainer.D.load_state_dict(trunk)
    trainer.cur_nimg = int(round(float(training.get("kimg", 0)) * 1000))
    trainer.batch_idx = trainer.cur_nimg // trainer.batch_size
    for row in [] if curve.is_file() else training.get("curve", []):
        append_row(curve, row)
    return float(training.get("seconds", 0.0))


def _scores(score: ProbeScore, trainer: FacePriorTrainer, cfg: DictConfig) -> dict:
    fake = draw(trainer.G_ema, cfg.eval_faces, cfg.seed + 1)
    save_image(
        fake[:64] * 0.5 + 0.5, Path(cfg.out) / f"samples_{trainer.cur_nimg // 1000:05d}kimg.png", nrow=8, padding=1
    )
    q = score(fake)
    return {
        "fd_probe": q["fd_probe"],
        "fd_probe_real": q["fd_probe/real"],
        "kid_probe": q["kid_probe"],
        "kid_probe_real": q["kid_probe/real"],
        "n": q["fd_probe/n"],
        "n_reference": q["fd_probe/n_reference"],
        "fd_probe_others": q.get("fd_probe/others", ""),
        "reference": score.name,
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="face_prior")
@one_line_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
