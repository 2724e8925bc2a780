"""experiments.export: a G in the public formats reads back bit for bit, in the public code's own layout; what a
format cannot express is refused by name, and a refused export writes nothing."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from experiments.export import EXPORTERS, export_generator, main, public_difference, read_generator
from lightning_modules.io.exporters import export_nvlabs_state_dict, nvlabs_channel_rule, rosinality_channel_multiplier
from lightning_modules.io.legacy import import_nvlabs, import_rosinality, load_generator
from lightning_modules.nets.latent import VoiceLatent
from lightning_modules.nets.stylegan2 import Generator, channels_per_resolution

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROS = SHARED / "reference" / "ros_g64.pt"
NV = SHARED / "reference" / "nv_ref.pt"
SMALL = dict(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16, impl="torch")


def _reference(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared reference tensors are not checked out)")
    return torch.load(path, weights_only=False)


def small_G(**kwargs):
    torch.manual_seed(0)
    G = Generator(**{**SMALL, **kwargs})
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases and noise strengths start at zero: nothing stays trivial
        G.mapping.w_avg.normal_()
    return G.eval()


def assert_same(a, b):
    """Equal nested dicts: the same keys in the same order, tensors equal in shape, dtype and value."""
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@torch.no_grad()
def assert_same_images(G, back):
    z = torch.randn([5, G.z_dim], generator=torch.Generator().manual_seed(1))
    for psi in (1.0, 0.7):  # 0.7: around the mean w, which must have come back too
        assert torch.equal(
            back(z, truncation_psi=psi, noise_mode="const"), G(z, truncation_psi=psi, noise_mode="const")
        )


@pytest.mark.parametrize("fmt", list(EXPORTERS))
@pytest.mark.parametrize(
    "kwargs", [{}, {"use_noise": False}, {"mapping_lr_multiplier": 0.05}], ids=["noise", "no_noise", "lr_mlp"]
)
def test_round_trip_is_exact(tmp_path, fmt, kwargs):
    G = small_G(**kwargs)
    written = export_generator(G, fmt, tmp_path / "g.pt")
    assert_same(torch.load(tmp_path / "g.pt", weights_only=True), written)  # plain data: the public loaders read it
    back = load_generator(tmp_path / "g.pt", impl="torch")
    assert_same_images(G, back)
    own, theirs = G.state_dict(), back.state_dict()
    assert all(torch.equal(theirs[k], own[k]) for k in own)
    # Without noise inputs the export holds zero noise: the same images from the public formats' noisy layer.
    assert all(v.count_nonzero() == 0 for k, v in theirs.items() if k not in own)
    assert set(theirs) - set(own) == ({k for k in theirs if "noise" in k} if "use_noise" in kwargs else set())
    assert back.mapping.fc0.bias_gain == G.mapping.fc0.bias_gain  # the lr multiplier, from args / init_kwargs
    assert_same(EXPORTERS[fmt](back), written)  # exported again: the same file


@pytest.mark.parametrize("fmt", list(EXPORTERS))
def test_a_per_pixel_output_bias_exports_and_the_public_difference_is_measured(tmp_path, fmt):
    """img_bias (the from-scratch recipe's mean-face start): our importer gives G back bit for bit; the public
    loader, which reads only the public keys, draws G's images minus the bias's per-pixel remainder."""
    G = small_G(img_bias=True)
    with torch.no_grad():
        G.synthesis.img_bias.copy_(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) - 0.3)
    written = export_generator(G, fmt, tmp_path / "g.pt")
    back = load_generator(tmp_path / "g.pt", impl="torch")
    assert_same_images(G, back)
    assert torch.equal(back.synthesis.img_bias, G.synthesis.img_bias)
    z = torch.randn([4, 8], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = G.synthesis(G.mapping(z), noise_mode="const")
    difference = public_difference(written, fmt, expected)
    residual = G.synthesis.img_bias - G.synthesis.img_bias.mean(dim=(1, 2), keepdim=True)
    assert difference["max_abs"] == pytest.approx(residual.abs().max().item(), abs=1e-5)
    assert difference["mean_abs"] == pytest.approx(residual.abs().mean().item(), abs=1e-5)
    assert public_difference(export_generator(small_G(), fmt, tmp_path / "plain.pt"), fmt, expected) is None


def test_rosinality_and_nvlabs_exports_convert_into_each_other(tmp_path):
    G = small_G()
    first = export_generator(G, "rosinality", tmp_path / "ros.pt")
    export_generator(read_generator(tmp_path / "ros.pt"), "nvlabs-state-dict", tmp_path / "nv.pt")
    again = export_generator(read_generator(tmp_path / "nv.pt"), "rosinality", tmp_path / "ros2.pt")
    assert_same(again, first)
    assert first["args"] == {"size": 16, "latent": 8, "n_mlp": 2, "lr_mlp": 0.01, "channels": {4: 16, 8: 16, 16: 8}}


def test_ros_g64_comes_back_as_rosinality_wrote_it(tmp_path):
    ref = _reference(ROS)
    original = ref["checkpoint"]["g_ema"]
    G = import_rosinality(ref["checkpoint"], w_avg_samples=0, impl="torch")
    G.mapping.w_avg.normal_()
    written = export_generator(G, "rosinality", tmp_path / "ros.pt")
    assert_same(written["g_ema"], original)  # rosinality's keys in its order, shapes, dtypes, values
    assert torch.equal(written["latent_avg"], G.mapping.w_avg)
    # Its small channels are in no rosinality table: no channel_multiplier, the channels for the table.
    assert written["args"] == {
        "size": 64,
        "latent": 64,
        "n_mlp": 8,
        "lr_mlp": 0.01,
        "channels": {4: 64, 8: 64, 16: 64, 32: 48, 64: 32},
    }
    assert torch.equal(import_rosinality(written, w_avg_samples=16).mapping.w_avg, G.mapping.w_avg)  # not estimated
    with pytest.raises(ValueError, match=r"ros_g64.pt: its generator's channels .* follow no min\(channel_base"):
        export_nvlabs_state_dict(G, "ros_g64.pt")
    with pytest.raises(ValueError, match=r"latent_avg is \[3\], expected a mean w \[64\]"):
        import_rosinality({**written, "latent_avg": torch.zeros(3)})


def test_nv_ref_comes_back_as_nvlabs_wrote_it():
    ref = _reference(NV)["generator"]
    written = export_nvlabs_state_dict(import_nvlabs(ref, impl="torch"))
    assert list(written["state_dict"]) == list(ref["state_dict"])  # resample filters included, in NVlabs' order
    assert all(torch.equal(written["state_dict"][k], v) for k, v in ref["state_dict"].items())
    assert written["init_kwargs"] == {
        **ref["init_kwargs"],
        "mapping_kwargs": {"num_layers": 4, "lr_multiplier": 0.01, "w_avg_beta": 0.995},
        "synthesis_kwargs": {"channel_base": 2048, "channel_max": 64, "conv_clamp": None, "architecture": "skip"},
    }


@pytest.mark.parametrize(
    ("resolution", "base", "top", "multiplier"), [(64, 16384, 512, 1), (256, 32768, 512, 2), (1024, 32768, 512, 2)]
)
def test_channel_rules_find_the_public_defaults(resolution, base, top, multiplier):
    channels = channels_per_resolution(resolution, base, top)
    assert nvlabs_channel_rule(channels) == (base, top)
    assert rosinality_channel_multiplier(channels) == multiplier
    assert rosinality_channel_multiplier({**channels, 4: 256}) is None
    assert nvlabs_channel_rule({**channels, 8: 100}) is None


@pytest.mark.parametrize(
    ("fmt", "kwargs", "feature"),
    [
        ("rosinality", {"conv_clamp": 256}, "conv_clamp=256"),
        ("rosinality", {"z_dim": 12}, "z_dim=12 != w_dim=8"),
        ("nvlabs-state-dict", {"channels": {4: 16, 8: 12, 16: 16}}, "follow no min"),
    ],
)
def test_what_a_format_cannot_express_is_refused(tmp_path, fmt, kwargs, feature):
    with pytest.raises(ValueError, match=rf"^runs/a/last.ckpt: its generator.*{feature}"):
        export_generator(small_G(**kwargs), fmt, tmp_path / "out" / "g.pt", source="runs/a/last.ckpt")
    assert not any(tmp_path.iterdir())


def test_an_export_that_does_not_read_back_is_not_written(tmp_path, monkeypatch):
    def off_by_a_bit(G, source):
        data = export_nvlabs_state_dict(G, source)
        data["state_dict"]["synthesis.b16.torgb.bias"] += 1e-6
        return data

    monkeypatch.setitem(EXPORTERS, "nvlabs-state-dict", off_by_a_bit)
    with pytest.raises(ValueError, match=r"g.pt: the nvlabs-state-dict export does not read back .*images differ"):
        export_generator(small_G(), "nvlabs-state-dict", tmp_path / "g.pt")
    assert not any(tmp_path.iterdir())


def test_an_export_to_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    """torch.save on a full disk raised "enforce fail at inline_container.cc" as a traceback."""
    (tmp_path / "g.pt").write_bytes(b"an earlier export")

    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1728 vs 1654")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"g.pt: could not be written \(\[enforce fail .*is the disk full\?"):
        export_generator(small_G(), "nvlabs-state-dict", tmp_path / "g.pt", overwrite=True)
    assert (tmp_path / "g.pt").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]  # no temporary file left


# ----------------------------------------------------------------------------------------------------
# The command on training checkpoints (untrained tiny models, as the other commands' tests use).
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{latent space: .ckpt}: z, and wplus (a voice head in place of G's mapping)."""
    from test_evaluate import SMOKE, smoke_checkpoint

    from lightning_modules.voice2face import Voice2FaceGAN

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = Voice2FaceGAN(**{**SMOKE, "latent_space": "wplus"})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, folder / "wplus.ckpt")
    return {"z": smoke_checkpoint(folder / "z.ckpt"), "wplus": folder / "wplus.ckpt"}


def test_export_needs_its_three_values():
    from hydra import compose, initialize_config_dir

    from experiments.schema import COMMANDS_SCHEMA, check_command_config

    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match="config: format, out must be given"):
        with initialize_config_dir(str(COMMANDS_SCHEMA.parent), version_base="1.3"):
            check_command_config(compose("export", ["ckpt=x.ckpt"]), "export")


def export_command(monkeypatch, capsys, *overrides):
    """(exit status, stdout, stderr) of `python -m experiments.export overrides...`, in this process."""
    GlobalHydra.instance().clear()
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # as `python -m` runs it: conf/ is found by the file's path
    # Hydra's logging "none": the test process keeps pytest's logging (the command's stdout config is for a shell).
    argv = ["experiments/export.py", *overrides, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        main()
    GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_command_exports_a_training_checkpoint(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exports" / "g_ema.pt"
    code, stdout, _ = export_command(monkeypatch, capsys, f"ckpt={checkpoints['z']}", "format=rosinality", f"out={out}")
    assert code == 0 and f"{out}: written and read back bit for bit" in stdout
    assert "channel_multiplier=<none fits>" in stdout and "voice head" not in stdout
    G = read_generator(checkpoints["z"])
    assert_same_images(G, load_generator(out, impl="torch"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["g_ema.pt", "g_ema.pt.json"]  # no temporary file
    manifest = json.loads((out.parent / "g_ema.pt.json").read_text())
    assert manifest["format"] == "rosinality" and manifest["public_code_draws"] == "the same images"


def test_command_exports_the_main_jobs_mean_face_bias(tmp_path, monkeypatch, capsys):
    """A checkpoint of the from-scratch recipe (generator img_bias=True) exports in both formats, and its manifest
    gives what the public code draws differently."""
    from test_evaluate import SMOKE

    from lightning_modules.voice2face import Voice2FaceGAN

    torch.manual_seed(0)
    model = Voice2FaceGAN(**{**SMOKE, "generator": {**SMOKE["generator"], "img_bias": True}})
    with torch.no_grad():
        model.G_ema.synthesis.img_bias.uniform_(-0.5, 0.5)
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    for fmt in EXPORTERS:
        out = tmp_path / f"{fmt}.pt"
        code, stdout, _ = export_command(monkeypatch, capsys, f"ckpt={ckpt}", f"format={fmt}", f"out={out}")
        assert code == 0 and "read back bit for bit" in stdout and "the public code draws its images off" in stdout
        drawn = json.loads(out.with_name(out.name + ".json").read_text())["public_code_draws"]
        assert 0.3 < drawn["max_abs"] <= drawn["residual_max_abs"] + 1e-5 and drawn["images"] == 4


def test_command_exports_the_unconditional_G_under_a_voice_head(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "g.pt"
    code, stdout, _ = export_command(
        monkeypatch, capsys, f"ckpt={checkpoints['wplus']}", "format=nvlabs-state-dict", f"out={out}"
    )
    assert code == 0 and "the voice head (latent_space=wplus) is not part of the export" in stdout
    G_ema = read_generator(checkpoints["wplus"])
    assert isinstance(G_ema.mapping, VoiceLatent)
    state = torch.load(out, weights_only=True)["state_dict"]
    for prefix, module in (("mapping.", G_ema.mapping.prior), ("synthesis.", G_ema.synthesis)):
        assert all(torch.equal(state[prefix + k], v) for k, v in module.state_dict().items())


def test_command_errors_are_one_line_and_write_nothing(checkpoints, tmp_path, monkeypatch, capsys):
    neither = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, neither)
    out = tmp_path / "g.pt"
    cases = [
        ([f"ckpt={neither}", "format=rosinality"], f"{neither}: not a generator file"),
        ([f"ckpt={tmp_path / 'missing.ckpt'}", "format=rosinality"], "missing.ckpt: no such file"),
        ([f"ckpt={checkpoints['z']}", "format=stylegan3"], "format: 'stylegan3' is not one of"),
    ]
    for overrides, message in cases:
        code, _, stderr = export_command(monkeypatch, capsys, *overrides, f"out={out}")
        assert code == 1 and stderr.splitlines()[0].startswith("voice2face: ") and message in stderr, stderr
        assert not out.exists()
    out.write_bytes(b"an earlier export")
    code, _, stderr = export_command(monkeypatch, capsys, f"ckpt={checkpoints['z']}", "format=rosinality", f"out={out}")
    assert code == 1 and f"{out}: already exists; choose another out= or pass overwrite=true" in stderr
    assert out.read_bytes() == b"an earlier export"
    args = (f"ckpt={checkpoints['z']}", "format=rosinality", f"out={out}", "overwrite=true")
    assert export_command(monkeypatch, capsys, *args)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt", "g.pt.json", "weights.pt"]
