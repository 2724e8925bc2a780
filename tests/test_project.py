"""experiments.project and lightning_modules.projector: a G's own W+ is recovered from its image; the command end
to end on a tiny corpus-shaped folder; the refusals, with nothing written.

The generator of these tests has more channels (32) than w dimensions (8) at every layer. W+ is identifiable from
the image only then: each layer's affine [channels x w_dim] has full column rank, so no change of a layer's w is
invisible. With fewer channels than w_dim (a real G's highest resolutions: 32-128 channels for 512-d ws) the part
of w in the affine's null space never reaches the image, and no projector can recover it (only the image).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.cli_errors import USER_ERRORS
from experiments.project import run
from lightning_modules.metrics.probe import FaceProbe
from lightning_modules.nets.stylegan2 import Generator
from lightning_modules.projector import (
    PixelDistance,
    ProbeDistance,
    learning_rate,
    load_probe,
    make_distance,
    noise_regularization,
    project,
    w_stats,
)

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"
TINY = dict(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=512, channel_max=32)  # 32 ch at 4-16 px


@pytest.fixture(autouse=True)
def one_thread():
    """These convolutions are tiny: one thread is faster than two fighting over shared cores (about 50x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(**TINY, impl="torch").eval()


def targets_of(G: Generator, stats, count: int = 3, psi: float = 0.5, seed: int = 1):
    """(W+ [count, num_ws, w_dim], their images): each layer's w the mapping of its own z (style mixing at every
    layer), pulled halfway to w_avg (psi): from the far half of W the projector can end in another basin."""
    z = torch.randn([count * G.num_ws, G.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = stats[0].lerp(G.mapping(z)[:, 0], psi).reshape(count, G.num_ws, G.w_dim)
        return ws, G.synthesis(ws, noise_mode="const")


def w_error(ws, truth, w_std):
    """Per image: the RMS over layers of |w - w_true|, in units of w_std (the RMS distance of a w to w_avg)."""
    return (ws - truth).norm(dim=2).square().mean(dim=1).sqrt() / w_std


@pytest.mark.parametrize("kind, steps", [("pixel", 500), ("probe", 300)])
@pytest.mark.integration
def test_projector_recovers_the_w_plus_the_generator_made(kind, steps):
    """Three images of random W+ (psi 0.5: the start, w_avg, is 0.54 / 0.37 / 0.48 w_std from them), projected
    together (the batched path). Tolerances: each image within PSNR >= 35 dB of its target (images in [-1, 1], so
    peak-to-peak 2) and each W+ within 0.15 w_std of the true one (RMS over layers), and within a quarter of its
    start distance. Measured: pixel, 500 steps: 0.009 / 0.012 / 0.063 w_std, 65 / 62 / 47 dB; probe (random
    weights), 300 steps: 0.018 / 0.029 / 0.074 w_std, 58 / 54 / 45 dB; about 9 s and 7 s on one CPU thread."""
    G = tiny_generator()
    stats = w_stats(G)
    truth, target = targets_of(G, stats)
    torch.manual_seed(0)
    distance = PixelDistance() if kind == "pixel" else ProbeDistance(FaceProbe(4, {}, width=16))
    result = project(G, target, distance, num_steps=steps, stats=stats, log_every=0)
    with torch.no_grad():
        image = G.synthesis(result.ws, noise_mode="const")
    psnr = 10 * torch.log10(4 / (image - target).square().mean(dim=(1, 2, 3)))
    error, start = w_error(result.ws, truth, stats[1]), w_error(stats[0].expand_as(truth), truth, stats[1])
    assert (psnr >= 35).all(), psnr
    assert (error <= 0.15).all() and (error <= 0.25 * start).all(), (error, start)


def test_projection_in_w_recovers_one_w_for_every_layer():
    """space="w" (NVlabs' projector): one w, returned repeated over the layers, found from an image of a single w
    (psi 0.5; the start is 0.31-0.78 w_std from it). One w is far easier to pin down than ten: measured 1e-5 to
    3e-5 w_std and PSNR 95-104 dB in 300 steps (about 5 s on one thread), so the tolerances are tighter than W+'s."""
    G = tiny_generator()
    stats = w_stats(G)
    z = torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        truth = stats[0].lerp(G.mapping(z)[:, :1], 0.5).expand(-1, G.num_ws, -1)
        target = G.synthesis(truth, noise_mode="const")
    result = project(G, target, PixelDistance(), num_steps=300, stats=stats, log_every=0, space="w")
    assert result.ws.shape == truth.shape and torch.equal(result.ws, result.ws[:, :1].expand_as(result.ws))
    with torch.no_grad():
        image = G.synthesis(result.ws, noise_mode="const")
    psnr = 10 * torch.log10(4 / (image - target).square().mean(dim=(1, 2, 3)))
    error, start = w_error(result.ws, truth, stats[1]), w_error(stats[0].expand_as(truth), truth, stats[1])
    assert (psnr >= 60).all(), psnr
    assert (error <= 0.01).all() and (error <= 0.05 * start).all(), (error, start)
    with pytest.raises(ValueError, match="space must be 'w' or 'wplus'"):
        project(G, target, PixelDistance(), num_steps=1, stats=stats, space="z")


@pytest.mark.integration
def test_an_image_is_projected_alike_alone_or_in_a_batch():
    """Each image draws from its own seed and owns its ws and noise maps: the batch is only a speed setting."""
    G = tiny_generator()
    with torch.no_grad():  # noise that reaches the image (a fresh G's strengths are 0), so the maps matter
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    stats = w_stats(G)
    _, target = targets_of(G, stats)
    together = project(G, target, PixelDistance(), num_steps=50, stats=stats, seeds=[5, 6, 7], log_every=0)
    alone = project(G, target[1:2], PixelDistance(), num_steps=50, stats=stats, seeds=[6], log_every=0)
    assert torch.allclose(together.ws[1], alone.ws[0], atol=1e-4)
    assert all(torch.allclose(together.noise[k][1], alone.noise[k][0], atol=1e-4) for k in alone.noise)
    assert not torch.allclose(together.ws[0], together.ws[1], atol=1e-2)  # other targets, other ws
    for maps in together.noise.values():  # renormalised after every step
        assert torch.allclose(maps.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(maps.square().mean(dim=(1, 2)), torch.ones(3), atol=1e-4)


def test_w_stats_come_from_the_generators_own_mapping_under_a_voice_head():
    from lightning_modules.nets.latent import VoiceLatent

    G = tiny_generator()
    w_avg, w_std = w_stats(G)
    G.mapping = VoiceLatent(G.mapping, z_dim=5)
    headed_avg, headed_std = w_stats(G)
    assert torch.equal(headed_avg, w_avg) and headed_std == w_std


def test_schedules_and_noise_penalty_are_nvlabs():
    assert learning_rate(0.0, 0.1, 0.25, 0.05) == 0  # the first step does not move
    assert learning_rate(0.025, 0.1, 0.25, 0.05) == pytest.approx(0.05)  # half way up the ramp
    assert learning_rate(0.5, 0.1, 0.25, 0.05) == pytest.approx(0.1)
    assert learning_rate(0.875, 0.1, 0.25, 0.05) == pytest.approx(0.05)  # half way down the cosine
    white = {"a": torch.randn([2, 32, 32], generator=torch.Generator().manual_seed(0))}
    smooth = {"a": torch.nn.functional.interpolate(white["a"][:, None, ::4, ::4], scale_factor=4.0)[:, 0]}
    assert noise_regularization(white).shape == (2,)
    assert (noise_regularization(smooth) > 100 * noise_regularization(white)).all()
    assert float(noise_regularization({})) == 0  # a G without noise inputs


# ----------------------------------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------------------------------


def save_generator(G: Generator, path: Path) -> Path:
    """G as an NVlabs {state_dict, init_kwargs} export, one of the files load_generator reads."""
    init_kwargs = {
        "z_dim": TINY["z_dim"],
        "w_dim": TINY["w_dim"],
        "img_resolution": TINY["img_resolution"],
        "mapping_kwargs": {"num_layers": TINY["mapping_layers"]},
        "synthesis_kwargs": {"channel_base": TINY["channel_base"], "channel_max": TINY["channel_max"]},
    }
    torch.save({"state_dict": G.state_dict(), "init_kwargs": init_kwargs}, path)
    return path


CORPUS = ("idA/v1/0001.png", "idA/v2/0002.jpg", "idB/v1/0001.jpg", "idB/v1/0002.png")


def make_corpus(root: Path, files=CORPUS) -> Path:
    """Smooth non-square faces-to-be (48x40: the projector crops the centre square and resizes it to 16 px)."""
    rng = np.random.default_rng(0)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((40, 48), Image.BILINEAR).save(root / rel)
    return root


def config(**values):
    with hydra.initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra.compose("project", [f"{k}={v}" for k, v in values.items()])


@pytest.fixture
def generator_file(tmp_path):
    return save_generator(tiny_generator(), tmp_path / "G.pt")


def test_project_command_end_to_end(tmp_path, generator_file, empty_hub, capsys):
    """4 images of 2 identities in batches of 3 and 1: one W+ per image, one mean per identity, the sheet and
    the manifest; nothing else (no temporary file) is left."""
    images, out = make_corpus(tmp_path / "faces"), tmp_path / "out"
    cfg = config(G=generator_file, images=images, out=out, steps=5, batch=3, device="cpu", seed=3)
    assert run(cfg) == 0
    assert "distance: pixel: pixel + 2x2-mean pyramid MSE" in capsys.readouterr().out
    latents = {rel: rel.replace("/", "__") + ".npy" for rel in CORPUS}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*latents.values(), "identity_idA.npy", "identity_idB.npy", "sheet.png", "manifest.json"]
    )
    ws = {rel: np.load(out / name) for rel, name in latents.items()}
    G = tiny_generator()
    assert all(w.shape == (G.num_ws, G.w_dim) and w.dtype == np.float32 for w in ws.values())
    for ident in ("idA", "idB"):
        mine = [w for rel, w in ws.items() if rel.startswith(f"{ident}/")]
        assert len(mine) == 2
        np.testing.assert_allclose(np.load(out / f"identity_{ident}.npy"), np.mean(mine, axis=0), rtol=1e-6)
    assert Image.open(out / "sheet.png").size == (4 * 18 + 2, 2 * 18 + 2)  # 4 columns, target over projection
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["G"] == str(generator_file) and manifest["distance"] == "pixel" and manifest["steps"] == 5
    assert (manifest["num_ws"], manifest["w_dim"], manifest["img_resolution"]) == (G.num_ws, G.w_dim, 16)
    assert set(manifest["images"]) == set(CORPUS) and manifest["errors"] == {}
    for rel, entry in manifest["images"].items():
        assert entry["latent"] == latents[rel] and entry["identity"] == rel.split("/")[0]
        assert math.isfinite(entry["distance"]) and math.isfinite(entry["distance_fit"])
    assert manifest["identities"] == {
        "idA": {"latent": "identity_idA.npy", "images": 2},
        "idB": {"latent": "identity_idB.npy", "images": 2},
    }
    # the same images one at a time: the same latents (each image's draws come from seed + its index)
    again = config(G=generator_file, images=images, out=tmp_path / "again", steps=5, batch=1, device="cpu", seed=3)
    assert run(again) == 0
    for rel, name in latents.items():
        np.testing.assert_allclose(np.load(tmp_path / "again" / name), ws[rel], atol=1e-5)


def test_an_unreadable_image_is_named_and_the_others_projected(tmp_path, generator_file, empty_hub, capsys):
    images = make_corpus(tmp_path / "faces", CORPUS[:1])
    (images / "idA" / "v1" / "broken.jpg").write_text("not a JPEG")
    out = tmp_path / "out"
    assert run(config(G=generator_file, images=images, out=out, steps=2, num_images=2, device="cpu")) == 1
    assert "broken.jpg" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["images"]) == ["idA/v1/0001.png"] and list(manifest["errors"]) == [
        str(images / "idA/v1/broken.jpg")
    ]


def refused(cfg, error, words):
    with pytest.raises(error, match=words) as caught:
        run(cfg)
    assert isinstance(caught.value, USER_ERRORS)  # one line and exit status 1 through one_line_errors


def test_refusals_write_nothing(tmp_path, generator_file, empty_hub):
    images, out = make_corpus(tmp_path / "faces"), tmp_path / "out"
    out.mkdir()
    (out / "old.npy").write_bytes(b"an earlier run")
    refused(config(G=generator_file, images=images, out=out), FileExistsError, "already holds files")
    assert [p.name for p in out.iterdir()] == ["old.npy"]
    new = tmp_path / "new"
    refused(config(G=tmp_path / "missing.pt", images=images, out=new), FileNotFoundError, "generator file not found")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    refused(config(G=tmp_path / "other.pt", images=images, out=new), ValueError, "not a generator file")
    (tmp_path / "empty" / "idA").mkdir(parents=True)
    (tmp_path / "empty" / "idA" / "notes.txt").write_text("no faces here")
    refused(config(G=generator_file, images=tmp_path / "empty", out=new), FileNotFoundError, "no .jpg/.jpeg/.png")
    refused(config(G=generator_file, images=tmp_path / "nowhere", out=new), FileNotFoundError, "no such folder")
    refused(config(G=generator_file, images=images, out=new, distance="lpips"), ValueError, "vgg16-397923af.pth")
    refused(config(G=generator_file, images=images, out=new, distance="probe"), ValueError, "needs probe=PATH")
    refused(config(G=generator_file, images=images, out=new, batch=0), ValueError, "batch: 0 is less than")
    refused(config(images=images, out=new), ValueError, r"G must be given: python -m experiments\.project G=")
    assert not new.exists()


def test_colliding_names_are_refused(tmp_path, generator_file):
    images = make_corpus(tmp_path / "faces", ("a/b__c.png", "a__b/c.png"))
    refused(config(G=generator_file, images=images, out=tmp_path / "out"), ValueError, "would be written twice")
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_distance_choice(tmp_path, empty_hub):
    """auto: LPIPS from a local VGG16 file (random weights stand in), else the probe of probe=, else pixel; a weights
    file that is there but wrong is refused, not passed over."""
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "vgg16.pth")
    lpips, name, _ = make_distance("auto", lpips_weights=str(tmp_path / "vgg16.pth"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert name == "lpips" and lpips(x, x.flip(-1)).shape == (2,) and float(lpips(x, x).abs().max()) < 1e-6
    big = torch.rand(2, 3, 512, 512) * 2 - 1  # above 256 px LPIPS compares the images area-resized to 256
    small = [torch.nn.functional.interpolate(y, size=(256, 256), mode="area") for y in (big, big.flip(-1))]
    torch.testing.assert_close(lpips(big, big.flip(-1)), lpips.net(*small).flatten())
    probe = FaceProbe(5, {"sex": 2}, width=8)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    distance, name, why = make_distance("auto", probe=str(tmp_path / "probe.pt"))
    assert name == "probe" and "LPIPS unavailable" in why
    assert torch.equal(load_probe(tmp_path / "probe.pt").trunk[0].weight, probe.trunk[0].weight)
    assert distance(x, x.flip(-1)).shape == (2,) and float(distance(x, x).abs().max()) < 1e-6
    shipped, name, _ = make_distance("probe", probe="face_probe_32")  # the evaluations' probe, by its name
    assert name == "probe" and distance(x, x.flip(-1)).dtype == shipped(x, x.flip(-1)).dtype == torch.float32
    assert make_distance("auto")[1] == "pixel"
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a face probe"):
        load_probe(tmp_path / "other.pt")
    huge = dict(probe.state_dict(), **{"identity.weight": torch.zeros(1).expand(100_000, 72_000)})
    torch.save(huge, tmp_path / "huge.pt")  # 64 KB claiming 28.8 GB: refused before any network is built
    with pytest.raises(ValueError, match="huge.pt: tensor 'identity.weight' .* claiming 28,800,000,000 bytes"):
        load_probe(tmp_path / "huge.pt")
    torch.save(dict(probe.state_dict(), **{"trunk.0.weight": torch.zeros(20_000, 3, 3, 3)}), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide.pt: trunk.0.weight \[20000, 3, 3, 3\] gives no probe width"):
        load_probe(tmp_path / "wide.pt")  # 2 MB whose width would build a 57 GB trunk
    with pytest.raises(ValueError, match="distance=auto: .*other.pt: not the vgg16 weights"):
        make_distance("auto", lpips_weights=str(tmp_path / "other.pt"))  # a bad file is no reason to use pixels


def test_a_real_photograph_is_projected(tmp_path, generator_file, empty_hub):
    """matplotlib's sample photograph (Grace Hopper, 512 x 600 JPEG), where matplotlib ships it."""
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is absent (matplotlib without its sample data)")
    images = tmp_path / "faces" / "hopper"
    images.mkdir(parents=True)
    (images / "grace_hopper.jpg").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    assert run(config(G=generator_file, images=tmp_path / "faces", out=out, steps=3, device="cpu")) == 0
    w = np.load(out / "hopper__grace_hopper.jpg.npy")
    assert w.shape == (tiny_generator().num_ws, 8) and np.isfinite(w).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["errors"] == {} and math.isfinite(manifest["images"]["hopper/grace_hopper.jpg"]["distance"])
