"""Voice2FaceGAN phase logic, regularisers, EMA, encoder modes and resume, on tiny networks defined here."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import EXPERIMENTS, quiet_trainer
from lightning import Callback, LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_modules.callbacks.samples import SampleGrids
from lightning_modules.ema import ema_beta
from lightning_modules.encoder_pretrain import EncoderPretrain
from lightning_modules.io.build import register_network
from lightning_modules.losses import lazy_adam_kwargs, path_lengths, r1_penalty
from lightning_modules.voice2face import Voice2FaceGAN
from lightning_modules.voice2face_loss import colour_distance

FEAT, FRAMES, RES, CLASSES = 6, 12, 8, 3


# ------------------------------------------------------- tiny networks with the contract's call signatures
class TinyEncoder(nn.Module):
    def __init__(self, in_features=FEAT, embed_dim=8, num_classes=0):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None

    def forward(self, feats, lengths=None):
        mask = torch.ones_like(feats[:, :1])
        if lengths is not None:
            mask = (torch.arange(feats.shape[2], device=feats.device) < lengths[:, None]).float()[:, None]
        return self.proj((feats * mask).sum(2) / mask.sum(2))

    def classify(self, emb):
        return self.head(emb)


class TinyMapping(nn.Module):
    def __init__(self, z_dim, w_dim, num_ws):
        super().__init__()
        self.num_ws = num_ws
        self.fc = nn.Linear(z_dim, w_dim)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        w = F.leaky_relu(self.fc(z), 0.2)
        if update_emas:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, 0.995))
        w = self.w_avg.lerp(w, truncation_psi)
        return w[:, None].repeat(1, self.num_ws, 1)


class TinySynthesis(nn.Module):
    def __init__(self, w_dim, img_resolution, num_ws):
        super().__init__()
        self.res = img_resolution
        self.layers = nn.ModuleList(nn.Linear(w_dim, 3 * 4 * 4) for _ in range(num_ws))

    def forward(self, ws, noise_mode="random"):
        x = sum(layer(ws[:, i]) for i, layer in enumerate(self.layers)).view(-1, 3, 4, 4)
        return torch.tanh(F.interpolate(x, size=self.res, mode="nearest"))


class TinyGenerator(nn.Module):
    def __init__(self, z_dim=8, img_resolution=RES, w_dim=8, num_ws=4):
        super().__init__()
        self.z_dim, self.num_ws = z_dim, num_ws
        self.mapping = TinyMapping(z_dim, w_dim, num_ws)
        self.synthesis = TinySynthesis(w_dim, img_resolution, num_ws)

    def forward(self, z, truncation_psi=1.0, noise_mode="random"):
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi), noise_mode=noise_mode)


class TinyPlainGenerator(nn.Module):  # a baseline without `.mapping`: no style mixing, no path length
    def __init__(self, z_dim=8, img_resolution=RES):
        super().__init__()
        self.res = img_resolution
        self.fc = nn.Linear(z_dim, 3 * img_resolution * img_resolution)

    def forward(self, z, truncation_psi=1.0, noise_mode="random"):
        return torch.tanh(self.fc(z)).view(-1, 3, self.res, self.res)


class TinyDiscriminator(nn.Module):
    def __init__(self, img_resolution=RES, num_classes=0):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
        feat = 4 * ((img_resolution + 1) // 2) ** 2
        self.out = nn.Linear(feat, 1)
        self.cls = nn.Linear(feat, num_classes) if num_classes > 0 else None

    def forward(self, img):
        h = self.trunk(img)
        return self.out(h).squeeze(1), (self.cls(h) if self.cls is not None else None)


class NaNDiscriminator(TinyDiscriminator):  # every gradient through it is NaN
    def forward(self, img):
        logits, class_logits = super().forward(img)
        return logits * float("nan"), class_logits


def _cfg(cls, **kwargs):
    register_network(f"{__name__}.{cls.__name__}")  # the tests' tiny networks, allowed in code
    return {"_target_": f"{__name__}.{cls.__name__}", **kwargs}


def make_model(generator=TinyGenerator, **kwargs):
    args = dict(
        encoder=_cfg(TinyEncoder, embed_dim=8),
        generator=_cfg(generator) if isinstance(generator, type) else generator,
        discriminator=_cfg(TinyDiscriminator),
        num_classes=CLASSES,
        feature_dim=FEAT,
        img_resolution=RES,
    )
    args.update(kwargs)
    return Voice2FaceGAN(**args)


class VoiceFaceSet(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.audio = torch.randn(n, FEAT, FRAMES, generator=g)
        self.face = torch.rand(n, 3, RES, RES, generator=g) * 2 - 1
        self.label = torch.arange(n) % CLASSES

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        return {
            "audio": self.audio[i],
            "audio_lengths": torch.tensor(FRAMES - i % 3),
            "face": self.face[i],
            "label": self.label[i],
        }


def fit(model, n, batch=4, tmp_path=None, ckpt_path=None, callbacks=(), max_epochs=1):
    trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=list(callbacks))
    trainer.fit(model, DataLoader(VoiceFaceSet(n), batch_size=batch), ckpt_path=ckpt_path)
    return trainer


def record_phases(model):
    """(iteration, phase) of every accumulate_gradients call (one per phase at accumulate=1)."""
    calls = []
    original = model.loss.accumulate_gradients

    def wrapped(phase, mb, gain):
        calls.append((model.iteration, phase))
        return original(phase, mb, gain)

    model.loss.accumulate_gradients = wrapped
    return calls


# ---------------------------------------------------------------- tests
def test_phase_order_and_lazy_intervals(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    calls = record_phases(model)
    fit(model, n=17 * 4, tmp_path=tmp_path)
    expected = []
    for i in range(17):
        expected += [(i, "Gmain")] + ([(i, "Greg")] if i % 4 == 0 else [])
        expected += [(i, "Dmain")] + ([(i, "Dreg")] if i % 16 == 0 else [])
    assert calls == expected
    assert (model.iteration, model.cur_nimg) == (17, 68)
    assert model.pl_mean.item() > 0
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_total_kimg_stops_training(tmp_path):
    model = make_model(total_kimg=0.02)
    fit(model, n=64, batch=4, tmp_path=tmp_path)
    assert (model.iteration, model.cur_nimg) == (5, 20)


def test_generator_without_mapping_skips_path_length(tmp_path):
    model = make_model(generator=TinyPlainGenerator)
    calls = record_phases(model)
    fit(model, n=8, tmp_path=tmp_path)
    assert [c[1] for c in calls] == ["Gmain", "Dmain", "Dreg", "Gmain", "Dmain"]
    assert model.configure_optimizers()[0].defaults["lr"] == pytest.approx(2e-4)  # no lazy G re-scaling


def test_gradients_pass_through_nan_to_num(tmp_path):
    model = make_model(discriminator=_cfg(NaNDiscriminator))
    d_before = [p.clone() for p in model.D.out.parameters()]
    fit(model, n=8, tmp_path=tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for p, p0 in zip(model.D.out.parameters(), d_before):
        torch.testing.assert_close(p, p0)  # NaN gradients became 0: Adam's first steps move nothing


def test_adam_rescaling_for_lazy_regularisation():
    model = make_model(lr=2e-4, betas=(0.5, 0.999), encoder_lr=1e-4)
    opt_G, opt_D = model.configure_optimizers()
    g_main, g_enc = opt_G.param_groups
    assert g_main["lr"] == pytest.approx(2e-4 * 4 / 5)
    assert g_main["betas"] == pytest.approx((0.5**0.8, 0.999**0.8))
    assert g_main["betas"][0] == pytest.approx(0.574349, abs=1e-6)
    assert (g_enc["lr"], g_enc["betas"]) == (pytest.approx(1e-4), pytest.approx((0.5, 0.999)))
    (d,) = opt_D.param_groups
    assert d["lr"] == pytest.approx(2e-4 * 16 / 17)
    assert d["betas"] == pytest.approx((0.5 ** (16 / 17), 0.999 ** (16 / 17)))
    assert lazy_adam_kwargs(1e-3, (0.0, 0.99), None) == {"lr": 1e-3, "betas": (0.0, 0.99)}
    assert model.configure_optimizers()[1].defaults["lr"] == pytest.approx(2e-4 * 16 / 17)
    unregularised = make_model(r1_gamma=0, pl_weight=0).configure_optimizers()
    assert [o.defaults["lr"] for o in unregularised] == [pytest.approx(2e-4)] * 2


def test_ema_beta_and_update():
    assert ema_beta(32, 10**9, 10, 0.05) == pytest.approx(0.997784, abs=1e-6)
    assert ema_beta(32, 10**9, 10, None) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 3200, 10, 0.05) == pytest.approx(0.5 ** (32 / 160))  # ramp-up caps the half-life
    model = make_model(ema_kimg=10, ema_rampup=None)
    with torch.no_grad():
        for p in model.G.parameters():
            p.add_(1.0)
        model.G.mapping.w_avg.fill_(3.0)
    before = [p.clone() for p in model.G_ema.parameters()]
    beta = model.update_ema(32)
    assert beta == pytest.approx(0.997784, abs=1e-6)
    for p_ema, p_old, p in zip(model.G_ema.parameters(), before, model.G.parameters()):
        torch.testing.assert_close(p_ema, p + (p_old - p) * beta)
    assert torch.equal(model.G_ema.mapping.w_avg, model.G.mapping.w_avg)  # buffers are copied, not averaged


def test_encoder_ema_averages_the_encoder_and_embeds_outside_training():
    model = make_model(ema_kimg=10, ema_rampup=None, encoder_ema=True)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.encoder_ema.parameters()]
    beta = model.update_ema(32)
    for p_ema, p_old, p in zip(model.encoder_ema.parameters(), before, model.encoder.parameters()):
        torch.testing.assert_close(p_ema, p + (p_old - p) * beta)
        assert not p_ema.requires_grad
    audio = torch.randn(2, FEAT, FRAMES)
    model.train()
    torch.testing.assert_close(model.embed(audio), model.encoder(audio))  # training: the encoder that learns
    model.eval()
    averaged = model.embed(audio)
    torch.testing.assert_close(averaged, model.encoder_ema(audio))  # figures and samples: the average
    assert not torch.allclose(averaged, model.encoder(audio))
    torch.testing.assert_close(model.embed(audio, ema=False), model.encoder(audio))  # asked for: the training one
    with torch.no_grad():  # generate draws each pair together: G_ema from the average, G from the training encoder
        torch.testing.assert_close(model.train().generate(audio), model.G_ema(model.encoder_ema(audio)))
        torch.testing.assert_close(model.eval().generate(audio, ema=False), model.G(model.encoder(audio)))
    restored = make_model(encoder_ema=True)
    restored.load_state_dict(model.state_dict(), strict=True)  # checkpoints carry it
    torch.testing.assert_close(restored.eval().embed(audio), averaged)
    assert make_model().encoder_ema is None  # off by default: the encoder embeds everywhere


def test_r1_penalty_against_hand_computed():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    a = torch.randn(2, 4, 4)
    logits = (a * x).sum([1, 2, 3]) + 0.5 * x.square().sum([1, 2, 3])  # d logits / dx = a + x
    expected = (a + x.detach()).square().sum([1, 2, 3])
    r1 = r1_penalty(x, logits)
    torch.testing.assert_close(r1, expected)
    r1.sum().backward()  # create_graph: the penalty trains D
    torch.testing.assert_close(x.grad, 2 * (a + x.detach()))


def test_path_length_against_hand_computed():
    torch.manual_seed(1)
    num_ws, w_dim, H = 3, 5, 4
    A = torch.randn(num_ws, w_dim, 2 * H * H)
    ws = torch.randn(2, num_ws, w_dim, requires_grad=True)
    img = torch.einsum("nkw,kwp->np", ws, A).view(2, 2, H, H)  # linear synthesis: J^T y = A y per ws row
    torch.manual_seed(7)
    lengths = path_lengths(img, ws)
    torch.manual_seed(7)
    y = torch.randn(2, 2, H, H) / math.sqrt(H * H)
    grads = torch.einsum("kwp,np->nkw", A, y.flatten(1))
    expected = grads.square().sum(2).mean(1).sqrt()
    torch.testing.assert_close(lengths, expected)


def test_resume_restores_counters_pl_mean_and_ema(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    trainer = fit(model, n=24, tmp_path=tmp_path)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain types only
    progress = loaded["voice2face_progress"]
    assert (progress["cur_nimg"], progress["iteration"]) == (24, 6) and progress["train_seconds"] > 0
    saved_ema = {k: v.clone() for k, v in model.G_ema.state_dict().items()}

    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(
                cur_nimg=pl_module.cur_nimg,
                iteration=pl_module.iteration,
                train_seconds=pl_module.train_seconds,
                pl_mean=pl_module.pl_mean.item(),
                ema={k: v.clone() for k, v in pl_module.G_ema.state_dict().items()},
            )

    resumed = make_model()
    fit(resumed, n=24, tmp_path=tmp_path, ckpt_path=ckpt, callbacks=[Probe()], max_epochs=2)
    assert (seen["cur_nimg"], seen["iteration"]) == (24, 6)
    assert seen["train_seconds"] == progress["train_seconds"]  # the wall-time axis continues
    assert seen["pl_mean"] == pytest.approx(model.pl_mean.item()) and seen["pl_mean"] > 0
    for k, v in saved_ema.items():
        torch.testing.assert_close(seen["ema"][k], v)
    assert (resumed.cur_nimg, resumed.iteration) == (48, 12)


def test_encoder_modes_and_checkpoint(tmp_path):
    pre = EncoderPretrain(encoder=_cfg(TinyEncoder, embed_dim=8), num_classes=CLASSES, feature_dim=FEAT)
    path = pre.save_encoder(str(tmp_path / "encoder.pt"))
    frozen = make_model(encoder_mode="frozen", encoder_ckpt=path)
    torch.testing.assert_close(frozen.encoder.proj.weight, pre.encoder.proj.weight)
    before = frozen.encoder.proj.weight.clone()
    opt_G, _ = frozen.configure_optimizers()
    assert len(opt_G.param_groups) == 1  # the frozen encoder is not optimised
    fit(frozen, n=8, tmp_path=tmp_path)
    assert torch.equal(frozen.encoder.proj.weight, before) and not frozen.encoder.training

    finetune = make_model(encoder_mode="finetune", encoder_ckpt=path)
    fit(finetune, n=8, tmp_path=tmp_path)
    assert not torch.equal(finetune.encoder.proj.weight, before)

    joint = make_model()
    w0 = joint.encoder.proj.weight.clone()
    fit(joint, n=8, tmp_path=tmp_path)
    assert not torch.equal(joint.encoder.proj.weight, w0)

    with pytest.raises(ValueError, match="encoder_ckpt"):
        make_model(encoder_mode="frozen")
    with pytest.raises(FileNotFoundError, match="encoder_pretrain"):
        make_model(encoder_mode="finetune", encoder_ckpt=str(tmp_path / "missing.pt"))
    torch.save({"encoder": {"proj.weight": torch.zeros(2, 2)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        make_model(encoder_mode="frozen", encoder_ckpt=str(tmp_path / "bad.pt"))


class HeldOutVoices(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(VoiceFaceSet(16), batch_size=4)

    def val_dataloader(self):  # whole utterances of six other speakers, padded per batch
        voices = VoiceFaceSet(6)
        voices.label = torch.arange(6)
        return DataLoader(voices, batch_size=3)


class FacesOfTrainSpeakers(HeldOutVoices):
    def faces(self, split):
        g = torch.Generator().manual_seed(1)
        return {name: torch.randint(0, 256, (3, 3, RES, RES), generator=g, dtype=torch.uint8) for name in "ab"}


def test_output_bias_starts_at_the_mean_face_and_resumes_trained(tmp_path):
    from datamodules.faces import mean_face

    generator = dict(
        _target_="lightning_modules.nets.stylegan2.Generator",
        w_dim=8,
        mapping_layers=1,
        channel_base=64,
        channel_max=8,
        impl="torch",
        img_bias=True,
    )
    dm = FacesOfTrainSpeakers()
    settings = dict(generator=generator, r1_gamma=0, pl_weight=0)
    model = make_model(lr=0.0, **settings)
    quiet_trainer(tmp_path / "a", max_epochs=1).fit(model, datamodule=dm)  # lr 0: the bias stays where it started
    for G in (model.G, model.G_ema):
        torch.testing.assert_close(G.synthesis.img_bias, mean_face(dm.faces("train")))

    trained = make_model(lr=1e-2, **settings)
    trainer = quiet_trainer(tmp_path / "b", max_epochs=1)
    trainer.fit(trained, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "b.ckpt")
    bias = trained.G.synthesis.img_bias.detach().clone()
    assert not torch.allclose(bias, mean_face(dm.faces("train")))  # it learned

    seen = []
    resumed = make_model(lr=1e-2, **settings)
    grab = type("Grab", (Callback,), {"on_train_start": lambda self, t, m: seen.append(m.G.synthesis.img_bias.clone())})
    quiet_trainer(tmp_path / "c", max_epochs=2, callbacks=[grab()]).fit(
        resumed, datamodule=dm, ckpt_path=tmp_path / "b.ckpt"
    )
    torch.testing.assert_close(seen[0], bias)  # the checkpoint's bias, not the mean face again


def test_generate_and_sample_grid(tmp_path):
    model = make_model(noise_z_dim=2)
    assert model.G.z_dim == 10  # embedding ‖ noise
    trainer = quiet_trainer(tmp_path, callbacks=[SampleGrids(every_kimg=0.008, count=5)])
    trainer.fit(model, datamodule=HeldOutVoices())
    grids = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert grids == [f"samples_{k:08.3f}kimg.png" for k in (0, 0.008, 0.016)]
    with Image.open(tmp_path / "samples" / grids[-1]) as grid:  # 5 speakers: real + 3 generated per row
        assert grid.size == (4 * (RES + 2) + 2 * 2, 5 * (RES + 2) + 2)
    audio = torch.randn(3, FEAT, 20)
    img = model.generate(audio, torch.tensor([20, 15, 9]), noise=torch.zeros(3, 2))
    assert img.shape == (3, 3, RES, RES) and img.abs().max() <= 1
    torch.testing.assert_close(img, model.generate(audio, torch.tensor([20, 15, 9]), noise=torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="audio must be"):
        model.generate(torch.randn(3, FEAT + 1, 20))


def test_sample_grid_of_training_voices_without_a_held_out_loader(tmp_path):
    grids = SampleGrids(every_kimg=0, count=3)
    fit(make_model(), n=8, tmp_path=tmp_path, callbacks=[grids])
    written = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert written == ["samples_0000.008kimg.png"]  # no grid at the start: the first batch gives the voices
    assert grids.batch["names"] == ["0", "1", "2"]  # the labels of the first training batch
    with Image.open(tmp_path / "samples" / written[0]) as grid:  # one face per voice
        assert grid.size == (2 * (RES + 2) + 2 * 2, 3 * (RES + 2) + 2)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="encoder_mode"):
        make_model(encoder_mode="partly")
    with pytest.raises(ValueError, match="_target_"):
        make_model(encoder={"embed_dim": 8})
    with pytest.raises(ValueError, match="colour_size=3 must divide the face size 8"):
        make_model(colour_weight=1.0, colour_size=3)
    make_model(colour_weight=0.0, colour_size=3)  # off: the size is not used


class RankFingerprint(Callback):
    """Writes each rank's flattened G, D, G_ema, encoder weights and pl_mean to a file after training."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        flat = {
            name: torch.cat([t.detach().flatten() for t in getattr(pl_module, name).state_dict().values()])
            for name in ("G", "D", "G_ema", "encoder")
        }
        flat["pl_mean"] = pl_module.pl_mean.detach().clone()
        torch.save(flat, f"{self.folder}/rank{trainer.global_rank}.pt")


@pytest.mark.integration
def test_ddp_two_processes_keep_networks_identical(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    torch.manual_seed(0)
    model = make_model()
    strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True, start_method="spawn")
    trainer = quiet_trainer(tmp_path, devices=2, strategy=strategy, callbacks=[RankFingerprint(str(tmp_path))])
    initial = {
        name: torch.cat([t.flatten() for t in getattr(model, name).state_dict().values()]).clone()
        for name in ("G", "D")
    }
    trainer.fit(model, DataLoader(VoiceFaceSet(40), batch_size=4))  # 5 iterations per rank, different batches
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in ("G", "D", "G_ema", "encoder", "pl_mean"):
        torch.testing.assert_close(r0[name], r1[name], rtol=0, atol=1e-6, msg=f"{name} differs across ranks")
    for name in ("G", "D"):
        assert not torch.equal(r0[name], initial[name])  # they did train


CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"


def compose_exp(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"+exp={name}"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_are_global_deltas(name):
    text = (CONF / "exp" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    cfg = compose_exp(name)
    stage_one = name in ("encoder_pretrain", "voice_prior")  # the encoder alone: SGD, stage 1's settings
    assert cfg.model._target_.endswith("EncoderPretrain" if stage_one else "Voice2FaceGAN")
    if name.endswith("_cpu"):  # the CPU recipe study's choice (docs/recipe.md): NVlabs' Adam
        assert (cfg.model.lr, list(cfg.model.betas)) == (0.0025, [0.0, 0.99])
    elif not stage_one:  # the paper's Adam everywhere else
        assert (cfg.model.lr, list(cfg.model.betas)) == (2e-4, [0.5, 0.999])
    assert cfg.model.encoder.get("se") is (name != "nose")
    assert cfg.model.encoder.get("act") == ("relu" if name == "relu" else "mish")


@pytest.mark.integration
def test_smoke_experiment_trains_real_networks(tmp_path):
    import hydra

    cfg = compose_exp("smoke")
    model = hydra.utils.instantiate(  # joint: no stage 1 here to write the encoder file (tests/test_run.py has it)
        cfg.model, num_classes=CLASSES, feature_dim=64, img_resolution=64, encoder_mode="joint", _recursive_=False
    )

    class Batches(Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {
                "audio": torch.randn(64, 40),
                "audio_lengths": torch.tensor(40 - i % 5),
                "face": torch.rand(3, 64, 64) * 2 - 1,
                "label": torch.tensor(i % CLASSES),
            }

    trainer = quiet_trainer(tmp_path, max_epochs=-1, callbacks=[hydra.utils.instantiate(cfg.callbacks.samples)])
    trainer.fit(model, DataLoader(Batches(), batch_size=8))
    assert (model.iteration, model.cur_nimg) == (4, 32)  # stopped by total_kimg = 0.032
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    img = model.generate(torch.randn(2, 64, 50), torch.tensor([50, 30]))
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()


def test_style_mixing_source_batch_or_self():
    """batch: the second latent is another voice of the batch; self: the same voice with fresh noise."""
    z = torch.randn(4, 8 + 2)
    for source, expect_other in (("batch", True), ("self", False)):
        model = make_model(noise_z_dim=2, style_mixing_prob=1.0, style_mixing_source=source)
        seen = []
        model.G.mapping.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0].clone()))
        model.loss.run_G(z)
        first, second = seen
        assert torch.equal(first, z)
        assert torch.equal(second[:, :8], z[:, :8].roll(1, dims=0) if expect_other else z[:, :8])
        assert not torch.equal(second[:, 8:], z[:, 8:])  # fresh noise either way
    with pytest.raises(ValueError, match="style_mixing_source"):
        make_model(style_mixing_source="other")


def test_reconstruction_term_pulls_faces_to_the_speakers():
    """recon_weight > 0 adds L1(G(voice), the speaker's face) to Gmain: with the adversarial and identity terms
    switched off by a zero-weight D, G's output moves toward the real faces."""
    torch.manual_seed(0)
    data = VoiceFaceSet(8)
    model = make_model(recon_weight=1.0, id_weight=0.0, r1_gamma=0, pl_weight=0, style_mixing_prob=0, lr=1e-2)
    nn.init.zeros_(model.D.out.weight)  # D's logit is constant: no adversarial gradient reaches G
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("audio", "audio_lengths", "face")}

    def l1():
        with torch.no_grad():
            return (
                (model.loss.run_G(model.embed(batch["audio"], batch["audio_lengths"]))[0] - batch["face"]).abs().mean()
            )

    before = l1()
    stats = []
    opt = torch.optim.Adam(list(model.G.parameters()) + list(model.encoder.parameters()), lr=1e-2)
    model.manual_backward = lambda loss: loss.backward()  # no trainer here
    for _ in range(30):
        opt.zero_grad()
        label = torch.zeros(8, dtype=torch.long)
        mb = {"audio": batch["audio"], "lengths": batch["audio_lengths"], "real": batch["face"], "label": label}
        stats.append(model.loss.accumulate_gradients("Gmain", mb, gain=1)[1])
        opt.step()
    assert "loss/G_recon" in stats[0] and l1() < 0.8 * before


def test_colour_term_compares_pooled_colours_and_nothing_finer():
    """colour_distance pools both faces to size² cells: detail that averages out within a cell costs nothing, a
    cell's shift costs its square over the 3 · size² values; colour_weight adds it to Gmain as weighted."""
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 0.6 - 0.3  # mean 0 in every 2x2 cell
    assert torch.allclose(colour_distance(real + checker, real, 4), torch.zeros(2), atol=1e-6)
    shifted = real.clone()
    shifted[1, 2, 4:6, 0:2] += 0.5  # one cell of one channel of the second face
    assert torch.allclose(colour_distance(shifted, real, 4), torch.tensor([0.0, 0.25 / 48]), atol=1e-6)
    assert colour_distance(real + checker, real, 8)[0] > 0.08  # pooled to single pixels, detail counts again
    with pytest.raises(AssertionError):
        colour_distance(real, real, 3)  # 8 px do not split into 3 cells

    data = VoiceFaceSet(4)
    mb = {
        "audio": data.audio,
        "lengths": torch.full([4], FRAMES),
        "real": data.face,
        "label": data.label,
    }
    losses = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        model = make_model(colour_weight=weight, colour_size=4, style_mixing_prob=0)
        model.manual_backward = lambda loss: None  # the values only
        losses[weight], stats = model.loss.accumulate_gradients("Gmain", dict(mb), gain=1)
    img = model.loss.run_G(model.latent(model.embed(mb["audio"], mb["lengths"], ema=False)))[0]
    expected = colour_distance(img.float(), mb["real"], 4).mean()
    assert torch.allclose(stats["loss/G_colour"], expected, rtol=1e-4)
    assert torch.allclose(losses[2.0] - losses[0.0], 2 * expected, rtol=1e-4)


def test_xflip_mirrors_about_half_of_the_real_faces(tmp_path):
    torch.manual_seed(0)
    model = make_model(xflip=True, r1_gamma=0)
    seen = []
    original = model.loss.accumulate_gradients
    model.loss.accumulate_gradients = lambda phase, mb, gain: (
        phase == "Dmain" and seen.append(mb["real"].clone()) or original(phase, mb, gain)
    )
    fit(model, n=64, batch=16, tmp_path=tmp_path)
    faces = VoiceFaceSet(64).face
    flipped = same = 0
    for i, real in enumerate(seen):
        for j in range(16):
            face = faces[16 * i + j]
            flipped += bool(torch.equal(real[j], face.flip(2)))
            same += bool(torch.equal(real[j], face))
    assert flipped + same == 64 and 16 <= flipped <= 48
