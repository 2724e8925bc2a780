"""The voice through W / W+ of a pretrained generator (model.latent_space, model.generator_init,
model.generator_train) and gradient accumulation (model.accumulate), on the public rosinality reference G and
an NVlabs-layout pickle written here."""

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
import torch
import torchvision
from conftest import Persisted, quiet_trainer
from safetensors.torch import save_file
from test_voice2face import CLASSES, FEAT, FRAMES, TinyDiscriminator, TinyEncoder, VoiceFaceSet, _cfg, fit, make_model
from torch.utils.data import DataLoader, Dataset

from lightning_modules.io.exporters import export_rosinality
from lightning_modules.io.latent_targets import layer_mean_share
from lightning_modules.io.legacy import load_pretrained
from lightning_modules.metrics.families import quality_family
from lightning_modules.metrics.markdown import headline_markdown
from lightning_modules.metrics.split import prior_faces
from lightning_modules.metrics.voice import ridge_solve, train_voices
from lightning_modules.nets.latent import VoiceLatent
from lightning_modules.nets.stylegan2 import Discriminator, Generator
from lightning_modules.voice2face import Voice2FaceGAN
from lightning_modules.voice2face_checkpoint import model_from_checkpoint, read_checkpoint
from lightning_modules.voice2face_targets import load_latent_targets, ridge_head

ROS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ros_g64.pt"
SMALL_D = {"_target_": "lightning_modules.nets.stylegan2.Discriminator", "channel_base": 256, "channel_max": 16}
STYLEGAN2 = {"_target_": "lightning_modules.nets.stylegan2.Generator", "impl": "torch"}


class Faces(Dataset):
    """VoiceFaceSet's voices with faces at `res` px."""

    def __init__(self, n, res):
        self.voices, self.res = VoiceFaceSet(n), res
        self.faces = torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def __len__(self):
        return len(self.voices)

    def __getitem__(self, i):
        return {**self.voices[i], "face": self.faces[i]}


def ros_copy(tmp_path):
    """A rosinality checkpoint of the public reference G (../shared/reference/ros_g64.pt) where it is checked out,
    else one of the same layout and widths written by our exporter (tests/test_export.py holds the exporter to
    that file's keys, shapes and values), so these tests also run where ../shared is absent."""
    path = tmp_path / "ros_g64.pt"
    if ROS.is_file():
        g_ema = torch.load(ROS, weights_only=False)["checkpoint"]["g_ema"]
    else:
        torch.manual_seed(0)
        channels = {4: 64, 8: 64, 16: 64, 32: 48, 64: 32}  # ros_g64's (its README)
        G = Generator(z_dim=64, w_dim=64, img_resolution=64, mapping_layers=8, channels=channels, impl="torch")
        g_ema = export_rosinality(G)["g_ema"]
    torch.save({"g_ema": g_ema}, path)
    return path


def hires_model(init, res, **kwargs):
    args = dict(
        encoder=_cfg(TinyEncoder, embed_dim=8),
        generator=STYLEGAN2,
        discriminator=SMALL_D,
        num_classes=CLASSES,
        feature_dim=FEAT,
        img_resolution=res,
        generator_init=str(init),
        latent_space="wplus",
        style_mixing_prob=0.5,
        D_reg_interval=2,
        G_reg_interval=2,
    )
    return Voice2FaceGAN(**{**args, **kwargs})


def train(model, res, tmp_path, n=8, batch=4):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, DataLoader(Faces(n, res), batch_size=batch))
    return trainer


def synthesis_and_prior(G):
    return {k: v.clone() for k, v in G.state_dict().items() if k.startswith(("synthesis.", "mapping.prior."))}


def test_ros_g64_wplus_trains_and_frozen_g_stays_bit_identical(tmp_path):
    init = ros_copy(tmp_path)
    model = hires_model(init, 64, generator_train="frozen")
    assert isinstance(model.G.mapping, VoiceLatent) and model.G.num_ws == 10
    ws = model.G.mapping(torch.randn(3, 8))
    assert list(ws.shape) == [3, 10, 64]
    # Offsets start small around the pretrained mean w: the first faces are near G's average face.
    assert (ws - model.G.mapping.prior.w_avg).abs().mean() < 0.5 * model.G.mapping.prior.w_avg.abs().mean() + 0.5
    before, head = synthesis_and_prior(model.G), model.G.mapping.out.weight.clone()
    before_ema = synthesis_and_prior(model.G_ema)
    train(model, 64, tmp_path)
    assert model.iteration == 2
    after = synthesis_and_prior(model.G)
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen G changed"
    assert all(torch.equal(before_ema[k], v) for k, v in synthesis_and_prior(model.G_ema).items())
    assert not torch.equal(head, model.G.mapping.out.weight), "the W+ head did not train"


def test_finetune_changes_g_and_the_checkpoint_rebuilds_without_the_file(tmp_path):
    init = ros_copy(tmp_path)
    model = hires_model(init, 64, generator_train="finetune")
    before = synthesis_and_prior(model.G)
    trainer = train(model, 64, tmp_path)
    after = synthesis_and_prior(model.G)
    changed = [k for k in before if k.startswith("synthesis.") and not torch.equal(before[k], after[k])]
    assert changed, "finetune left the synthesis unchanged"
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("mapping.prior."))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    init.unlink()  # a handed-over run folder: the pretrained file is not there
    state = read_checkpoint(ckpt)
    assert state["hyper_parameters"]["generator"]["channels"] == model.G.init_kwargs["channels"]
    rebuilt = model_from_checkpoint(state)
    assert rebuilt.hparams.generator_init == str(init)
    voice = torch.randn(2, FEAT, FRAMES)
    torch.testing.assert_close(rebuilt.generate(voice), model.eval().generate(voice), rtol=0, atol=0)


def test_voice_through_z_needs_the_mapping_width(tmp_path):
    init = ros_copy(tmp_path)
    with pytest.raises(ValueError, match=r"ros_g64.pt: its mapping takes a 64-d z.*embed_dim=64.*wplus"):
        hires_model(init, 64, latent_space="z")
    model = hires_model(init, 64, latent_space="z", encoder=_cfg(TinyEncoder, embed_dim=64), generator_train="frozen")
    assert not model.pl_active  # nothing in G trains: the penalty would have no parameter to move


def test_resolution_and_format_refusals(tmp_path):
    init = ros_copy(tmp_path)
    with pytest.raises(ValueError, match=r"ros_g64.pt: a 64 px generator, but the faces are 32 px.*face_size=64"):
        hires_model(init, 32)
    other = tmp_path / "notes.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"notes.pt: not a generator file; give one of"):
        hires_model(other, 64)
    text = tmp_path / "readme.pkl"
    text.write_text("not a pickle")
    with pytest.raises(ValueError, match=r"readme.pkl: not a loadable NVlabs network pickle"):
        hires_model(text, 64)


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-voice2face-test",))


def test_a_pickle_that_imports_other_names_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _Evil()}, f)
    with pytest.raises(ValueError, match=r"evil.pkl: .*refusing to load global shutil.rmtree"):
        hires_model(path, 64)


def nvlabs_pickle(path, res, with_d=True):
    """An NVlabs-layout network pickle of small channels at `res` px (G and, if asked, D), as
    `torch_utils.persistence` writes one; our networks stand in for NVlabs' (same parameter names)."""
    g_kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3)
    g_kwargs.update(mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 2048, "channel_max": 8})
    G = Generator(z_dim=8, w_dim=8, img_resolution=res, mapping_layers=2, channel_base=2048, channel_max=8)
    G.mapping.w_avg.normal_()
    D = Discriminator(img_resolution=res, channel_base=2048, channel_max=8)
    d_kwargs = dict(c_dim=0, img_resolution=res, img_channels=3, architecture="resnet", channel_base=2048)
    d_kwargs.update(channel_max=8, epilogue_kwargs={"mbstd_group_size": 2})
    nets = {
        "G": Persisted(G, g_kwargs),
        "G_ema": Persisted(G, g_kwargs),
        "D": Persisted(D, d_kwargs) if with_d else None,
    }
    with open(path, "wb") as f:
        pickle.dump(nets, f)
    return G, D


def test_nvlabs_1024_pickle_gives_18_ws_and_seeds_d(tmp_path, nvlabs_modules):
    path = tmp_path / "network-snapshot.pkl"
    G, D = nvlabs_pickle(path, 1024)
    model = hires_model(path, 1024, discriminator={"_target_": "lightning_modules.nets.stylegan2.Discriminator"})
    assert model.G.num_ws == 18 and list(model.G.mapping(torch.randn(2, 8)).shape) == [2, 18, 8]
    torch.testing.assert_close(model.G.mapping.w_anchor, G.mapping.w_avg)
    assert model.hparams.discriminator["channel_base"] == 2048 and model.D.b4.mbstd.group_size == 2
    trunk = {k: v for k, v in model.D.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in trunk.items())
    assert model.D.classifier is not None  # the identity head of this run's classes, on the file's trunk


def test_a_voice2face_checkpoint_seeds_a_new_run(tmp_path):
    """The make-run route of the issue: a trained 64 px checkpoint as generator_init (its G_ema and D trunk)."""
    init = ros_copy(tmp_path)
    first = hires_model(init, 64, generator_train="finetune", latent_space="wplus")
    trainer = train(first, 64, tmp_path)
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    second = hires_model(ckpt, 64, latent_space="wplus")
    theirs = {k: v for k, v in first.G_ema.state_dict().items() if k.startswith("synthesis.")}
    assert all(torch.equal(v, second.G.state_dict()[k]) for k, v in theirs.items())
    assert all(
        torch.equal(v, second.D.state_dict()[k]) for k, v in first.D.state_dict().items() if "classifier" not in k
    )


def test_accumulation_gives_the_full_batch_step(tmp_path):
    """accumulate=2 splits each phase into two micro-batches and steps once: with no batch statistics in the
    networks and no random draws that depend on the batch split, the weights match accumulate=1."""
    models = []
    for k in (1, 2):
        torch.manual_seed(0)
        model = make_model(accumulate=k, pl_weight=0, style_mixing_prob=0, D_reg_interval=1)
        fit(model, n=16, batch=8, tmp_path=tmp_path / str(k), max_epochs=1)
        models.append(model)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} differs under accumulation")
    with pytest.raises(ValueError, match="accumulate must be >= 1"):
        make_model(accumulate=0)
    model = make_model(accumulate=3, discriminator=_cfg(TinyDiscriminator))
    with pytest.raises(ValueError, match="a batch of 8 does not split into accumulate=3"):
        fit(model, n=8, batch=8, tmp_path=tmp_path / "3")


def test_latent_loss_pulls_the_voice_ws_to_the_speakers_projection(tmp_path):
    init = ros_copy(tmp_path)
    targets = tmp_path / "projected"
    targets.mkdir()
    goal = torch.randn(CLASSES, 10, 64)
    for i in range(CLASSES - 1):  # the last speaker has no projection: it is left out of the loss
        np.save(targets / f"identity_id{i}.npy", goal[i].numpy())
    model = hires_model(init, 64, latent_weight=1.0, latent_targets=str(targets), generator_train="frozen")
    load_latent_targets(model, [f"id{i}" for i in range(CLASSES)])
    assert model.w_target_mask.tolist() == [True] * (CLASSES - 1) + [False]
    label = torch.tensor([0, 1, 2, 0])
    ws = model.G.mapping(torch.randn(4, 8))
    expected = (torch.cat([ws[:2], ws[3:]]) - goal[[0, 1, 0]]).square().sum(-1).mean()  # label 2 has none
    torch.testing.assert_close(model.loss.latent_loss(ws, label), expected)
    with pytest.raises(ValueError, match="latent_space=wplus"):
        hires_model(init, 64, latent_weight=1.0, latent_space="z", encoder=_cfg(TinyEncoder, embed_dim=64))
    np.save(targets / "identity_id2.npy", np.zeros((14, 64), np.float32))
    with pytest.raises(
        ValueError, match=r"identity_id2.npy: a W\+ of shape \[14, 64\] .*, but this G takes \[10, 64\]"
    ):
        load_latent_targets(model, [f"id{i}" for i in range(CLASSES)])


def test_a_w_voice_is_told_when_its_targets_differ_by_layer(tmp_path, caplog):
    """latent_space=w pulls one w toward the layer mean of W+ targets: the face prior's own W+ targets keep 15 % of
    their between-speaker variance there (docs/face_prior.md), so the log says so for W+ targets under a W voice;
    for targets projected in W (one w repeated over the layers) it says nothing."""
    init = ros_copy(tmp_path)
    per_layer, one_w = torch.randn(CLASSES, 10, 64), torch.randn(CLASSES, 1, 64).expand(-1, 10, -1).contiguous()
    assert layer_mean_share(per_layer, torch.ones(CLASSES, dtype=torch.bool)) < 0.2
    assert layer_mean_share(one_w, torch.ones(CLASSES, dtype=torch.bool)) == pytest.approx(1.0)
    names = [f"id{i}" for i in range(CLASSES)]
    for kind, goal in (("wplus", per_layer), ("w", one_w)):
        path = tmp_path / f"{kind}.safetensors"
        save_file({n: goal[i] for i, n in enumerate(names)}, str(path))
        model = hires_model(init, 64, latent_space="w", latent_weight=1.0, latent_targets=str(path))
        caplog.clear()
        with caplog.at_level("INFO", logger="lightning_modules.voice2face_targets"):
            load_latent_targets(model, names)
        told = "pulls one w toward the layer mean of these W+ targets" in caplog.text
        assert told == (kind == "wplus"), kind


def test_latent_targets_that_would_mislead_training_are_refused_or_passed_over(tmp_path):
    """A NaN target skipped every G step with exit 0; a .npy header claiming 1e5 x 1e5 was read; a stale
    identity_<id>.npy of an earlier projection (project overwrite=true) was read by name."""
    init = ros_copy(tmp_path)
    targets = tmp_path / "projected"
    targets.mkdir()
    for i in range(CLASSES):
        np.save(targets / f"identity_id{i}.npy", np.ones((10, 64), np.float32))
    model = hires_model(init, 64, latent_weight=1.0, latent_targets=str(targets), generator_train="frozen")
    names = [f"id{i}" for i in range(CLASSES)]
    (targets / "manifest.json").write_text(json.dumps({"identities": {"id0": {}, "id1": {}}}))
    load_latent_targets(model, names)  # this projection's two; the others are an earlier run's
    assert model.w_target_mask.tolist() == [True, True] + [False] * (CLASSES - 2)
    nan = np.ones((10, 64), np.float32)
    nan[3, 5] = np.nan
    np.save(targets / "identity_id1.npy", nan)
    with pytest.raises(ValueError, match="identity_id1.npy: its W\\+ holds NaN or infinity"):
        load_latent_targets(model, names)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    with open(targets / "identity_id1.npy", "wb") as f:  # a header claiming 1e5 x 1e5 floats over 16 bytes
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (100_000, 100_000)})
        f.write(b"0" * 16)
    with pytest.raises(ValueError, match=r"identity_id1.npy: a W\+ of shape \[100000, 100000\]"):
        load_latent_targets(model, names)
    (targets / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="manifest.json: not the manifest experiments.project writes"):
        load_latent_targets(model, names)


def test_hires256_composes_and_refuses_a_generator_of_another_size(compose_cfg, tmp_path):
    """The real +exp=hires256 config: W+ at 256 px from FFHQ-aligned faces; a 64 px file is refused by name."""
    init = ros_copy(tmp_path)
    cfg = compose_cfg("+exp=hires256", f"model.generator_init={init}", "model.encoder_mode=joint")
    assert (cfg.data.face_size, cfg.data.face_align, cfg.model.latent_space) == (256, "ffhq", "wplus")
    with pytest.raises(Exception, match=r"ros_g64.pt: a 64 px generator, but the faces are 256 px"):
        hydra.utils.instantiate(cfg.model, num_classes=CLASSES, feature_dim=64)


def test_run_refuses_a_generator_of_another_size_before_writing_anything(compose_cfg, tmp_path):
    from experiments.run import train as run_train

    init = ros_copy(tmp_path)
    cfg = compose_cfg("+exp=smoke", "logger=none", "data.face_size=32", f"model.generator_init={init}")
    with pytest.raises(ValueError, match=r"ros_g64.pt: a 64 px generator, but the faces are 32 px"):
        run_train(cfg)
    assert not Path(cfg.paths.output_dir).exists(), "a refused run wrote its folder"


@pytest.mark.integration
def test_perceptual_loss_is_a_loss_not_part_of_the_checkpoint(tmp_path):
    init = ros_copy(tmp_path)
    vgg = tmp_path / "vgg16.pth"  # a random-weight VGG16 trunk in torchvision's layout stands in for the real file
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, vgg)
    with pytest.raises(ValueError, match=r"model.perceptual_vgg.*missing.pth does not exist"):
        hires_model(init, 64, perceptual_weight=1.0, perceptual_vgg=str(tmp_path / "missing.pth"))
    model = hires_model(init, 64, perceptual_weight=1.0, perceptual_vgg=str(vgg), pl_weight=0, r1_gamma=0)
    seen = []
    original = model.loss.accumulate_gradients
    model.loss.accumulate_gradients = lambda *args, **kw: seen.append(original(*args, **kw)) or seen[-1]
    trainer = train(model, 64, tmp_path, n=4, batch=4)
    assert "loss/G_lpips" in seen[0][1] and torch.isfinite(seen[0][1]["loss/G_lpips"])
    assert not any("lpips" in k or k.startswith("perceptual") for k in model.state_dict())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    vgg.unlink()  # rebuilding the model for inference needs neither the loss's file nor the pretrained G's
    init.unlink()
    model_from_checkpoint(read_checkpoint(tmp_path / "last.ckpt"))


def test_frozen_without_a_pretrained_generator_is_refused():
    from test_evaluate import SMOKE

    """It froze a random G, with one INFO line as the only sign."""
    with pytest.raises(ValueError, match=r"generator_train=frozen without model.generator_init would freeze a random"):
        Voice2FaceGAN(**{**SMOKE, "generator_train": "frozen"})


def test_a_prior_whose_discriminator_does_not_fit_its_arguments_fails_before_stage_1(compose_cfg, tmp_path):
    """An NVlabs D whose tensors do not match its own init_kwargs failed only when stage 2 built the model, after
    stage 1 had trained."""
    from experiments.run import train
    from lightning_modules import weights

    prior = torch.load(weights.shipped_file("face_prior_64"), weights_only=True)
    prior["discriminator"]["init_kwargs"]["channel_max"] = 64  # the tensors are of channel_max 128
    torch.save(prior, tmp_path / "prior.pt")
    cfg = compose_cfg("+exp=prior_cpu", f"model.generator_init={tmp_path / 'prior.pt'}", "logger=none")
    with pytest.raises(ValueError, match="prior.pt: its discriminator does not fit model.discriminator"):
        train(cfg)
    assert not list(tmp_path.glob("**/stage1"))


def test_the_prior_reference_draws_the_pretrained_g_alone_and_only_while_it_is_frozen(tmp_path):
    init = ros_copy(tmp_path)
    model = hires_model(init, 64, latent_space="w", generator_train="frozen").eval()
    G, _, _ = load_pretrained(str(init), impl="torch")  # read again, apart from the model
    z = torch.randn([5, G.z_dim], generator=torch.Generator().manual_seed(7))
    expected = G.synthesis(G.mapping(z), noise_mode="const")
    faces = prior_faces(model, 5, seed=7, batch=2)
    assert list(faces.shape) == [5, 3, 64, 64]
    # batches of 2 against one of 5: other float sums (1.7e-5 on the stand-in G where ../shared is absent)
    torch.testing.assert_close(faces, expected, rtol=0, atol=1e-4)
    voiced = model.generate_from(torch.randn(5, 8))
    assert (voiced - faces).abs().mean() > 0.01, "the reference drew the voice head's faces"
    assert prior_faces(hires_model(init, 64, latent_space="w"), 5, seed=7) is None  # finetune: no longer the prior


def test_the_quality_family_scores_the_prior_beside_the_generated_faces(tmp_path):
    init = ros_copy(tmp_path)
    model = hires_model(init, 64, latent_space="w", generator_train="frozen").eval()
    probe = SimpleNamespace(predict=lambda x: (x.mean(dim=(2, 3)),))  # per-channel means: a 3-d feature
    real = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = SimpleNamespace(
        probe=(probe,),
        model=model,
        gen=model.generate_from(torch.randn(10, 8)),
        real_u8=real,
        real_labels=torch.arange(12) % 3,
        gen_labels=torch.arange(10) % 3,
        settings=SimpleNamespace(quality=SimpleNamespace(repeats=2, seed=0)),
        notes={},
    )
    out = quality_family(split)
    assert {"fd_probe", "fd_probe/speaker_mean", "fd_probe/prior", "kid_probe/prior"} <= set(out)
    assert {"probe_spread/between", "probe_spread/within"} <= set(out)
    assert out["fd_probe/prior"] != out["fd_probe"]
    split.model = hires_model(init, 64, latent_space="w").eval()
    assert "fd_probe/prior" not in quality_family(split)
    assert "fd_probe of the pretrained G alone (random z)" in headline_markdown(out)
    assert "spread between speakers (probe features; real faces = 1)" in headline_markdown(out)


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_a_head_set_to_a_ridge_read_reproduces_a_linear_function_of_its_features(space):
    """set_output writes a plain linear map into the output layer's equalised-lr parametrisation: targets that are
    a linear function of the features the head reads come back out of it (w: [N, w_dim]; wplus: [N, num_ws, w_dim])."""
    torch.manual_seed(0)
    prior = Generator(z_dim=16, w_dim=16, img_resolution=8, mapping_layers=2, channels={4: 8, 8: 8}, impl="torch")
    head = VoiceLatent(prior.mapping, z_dim=12, space=space, impl="torch")
    z = torch.randn(200, 12)
    rows = 1 if space == "w" else head.num_ws
    with torch.no_grad():
        ws = (head.features(z) @ torch.randn(16, rows * 16)).reshape(200, rows, 16) + 0.5
    ws = ws[:, 0] if space == "w" else ws
    weight, bias = ridge_solve(head.features(z).detach(), head.offsets(ws), 1e-9)
    head.set_output(weight.float(), bias.float())
    expected = ws[:7, None].expand(-1, head.num_ws, -1) if space == "w" else ws[:7]
    torch.testing.assert_close(head(z[:7]), expected, atol=1e-3, rtol=1e-3)
    with pytest.raises(AssertionError):
        head.offsets(torch.randn(200, 3, 16))


def test_the_models_head_starts_at_the_ridge_read_of_the_train_voices_targets(tmp_path):
    """model.latent_init_ridge: G's and G_ema's heads move from the anchor to the regression of the speakers'
    targets on the train voices (a speaker without one left out), and the process' random state is untouched."""
    init = ros_copy(tmp_path)
    names = [f"id{i}" for i in range(CLASSES)]
    goal = torch.randn(CLASSES, 1, 64).expand(-1, 10, -1).contiguous()
    path = tmp_path / "w.safetensors"
    save_file({n: goal[i] for i, n in enumerate(names[:-1])}, str(path))  # the last speaker has no target
    model = hires_model(init, 64, latent_space="w", latent_init_ridge=1e-3, latent_targets=str(path))
    load_latent_targets(model, names)
    voices = DataLoader(VoiceFaceSet(24), batch_size=8)
    with torch.no_grad():
        batch = next(iter(voices))
        z, label = model.embed(batch["audio"], batch["audio_lengths"]), batch["label"]
        has = label < CLASSES - 1
        miss = lambda: (model.G.mapping(z)[has, 0] - goal[label[has], 0]).square().sum(-1).mean()  # noqa: E731
        before = miss()
        state = torch.random.get_rng_state()
        ridge_head(model, SimpleNamespace(train_dataloader=lambda: voices))
        assert torch.equal(torch.random.get_rng_state(), state), "ridge_head moved the process' random state"
        assert miss() < 0.5 * before, (miss(), before)
        # exactly the regression over the utterances of speakers with a target: the last speaker's are left out
        emb, labels = train_voices(model, SimpleNamespace(train_dataloader=lambda: voices), 0)
        head, keep = model.G.mapping, labels < CLASSES - 1
        weight, bias = ridge_solve(head.features(emb[keep]), head.offsets(goal[labels[keep], 0]), 1e-3)
        expected = head.features(emb).double() @ weight + bias + head.w_anchor.double()
        torch.testing.assert_close(head(emb)[:, 0].double(), expected, atol=1e-4, rtol=1e-4)
    for key, value in model.G.mapping.state_dict().items():
        assert torch.equal(value, model.G_ema.mapping.state_dict()[key]), key
    with pytest.raises(ValueError, match="latent_init_ridge fits the head's output"):
        hires_model(init, 64, latent_space="w", latent_init_ridge=1e-3)
