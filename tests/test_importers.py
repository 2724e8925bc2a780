"""The rosinality and NVlabs importers: agreement with the public code's outputs, and a safe unpickler."""

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from conftest import write_nvlabs_pickle

from lightning_modules.io.legacy import import_nvlabs, import_rosinality
from lightning_modules.io.state_dict import compare_state_dict
from lightning_modules.nets.stylegan2 import Generator

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROS = SHARED / "reference" / "ros_g64.pt"
NV = SHARED / "reference" / "nv_ref.pt"
TOL = 1e-4


def _load(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared reference tensors are not checked out)")
    return torch.load(path, weights_only=False)


def _max_diff(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_rosinality_images_mixing_and_truncation():
    ref = _load(ROS)
    G = import_rosinality(ref["checkpoint"], w_avg_samples=0, impl="torch").eval()
    assert (G.img_resolution, G.num_ws, G.z_dim) == (64, ref["n_latent"], 64)
    ws = G.mapping(ref["z"])
    assert _max_diff(ws[:, 0], ref["w"]) <= TOL
    assert _max_diff(G.synthesis(ws, noise_mode="const"), ref["img"]) <= TOL
    i = ref["inject_index"]
    mixed = torch.cat([ws[:, :i], G.mapping(ref["z2"])[:, i:]], dim=1)
    assert _max_diff(G.synthesis(mixed, noise_mode="const"), ref["mix"]) <= TOL
    G.mapping.w_avg.copy_(ref["truncation_latent"][0])
    img = G(ref["z"], truncation_psi=ref["truncation_psi"], noise_mode="const")
    assert _max_diff(img, ref["trunc"]) <= TOL


def test_rosinality_from_a_file_with_namespace_args(tmp_path):
    ref = _load(ROS)
    path = tmp_path / "ros.pt"
    torch.save({"g_ema": ref["checkpoint"]["g_ema"], "args": argparse.Namespace(size=64, n_mlp=8)}, path)
    G = import_rosinality(path, w_avg_samples=256, impl="torch")
    assert G.mapping.w_avg.abs().sum() > 0  # estimated from seeded samples
    broken = dict(ref["checkpoint"]["g_ema"])
    del broken["convs.3.noise.weight"]
    with pytest.raises(ValueError, match="convs.3.noise.weight"):
        import_rosinality({"g_ema": broken})


@torch.no_grad()
def test_nvlabs_state_dict_images_and_truncation():
    ref = _load(NV)["generator"]
    G = import_nvlabs(ref, impl="torch").eval()
    assert _max_diff(G.mapping(ref["z"]), ref["ws"]) <= TOL
    assert _max_diff(G.synthesis(ref["ws"], noise_mode="const"), ref["img"]) <= TOL
    ws = G.mapping(ref["z"], truncation_psi=ref["truncation_psi"])
    assert _max_diff(ws, ref["ws_trunc"]) <= TOL
    assert _max_diff(G.synthesis(ws, noise_mode="const"), ref["img_trunc"]) <= TOL


def test_nvlabs_pickle_is_rebuilt_without_running_its_code(tmp_path, nvlabs_modules):
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16, impl="torch")
    for p in G.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    G.mapping.w_avg.normal_()
    path = tmp_path / "network-snapshot.pkl"
    write_nvlabs_pickle(path, G, 128, 16, nvlabs_modules.EasyDict)
    imported = import_nvlabs(path, impl="torch")
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            imported(z, truncation_psi=0.7, noise_mode="const"), G(z, truncation_psi=0.7, noise_mode="const")
        )


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _RunsCodeInStorage:
    """A 'storage' whose bytes are a torch.save file that runs code when fully unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import io

        buf = io.BytesIO()
        torch.save(_RunsCode(self.marker), buf)
        return torch.storage._load_from_bytes, (buf.getvalue(),)


@pytest.mark.parametrize("payload", [_RunsCode, _RunsCodeInStorage])
def test_nvlabs_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": payload(marker)}, f)
    with pytest.raises(ValueError, match="evil.pkl"):
        import_nvlabs(path)
    assert not marker.exists()


def test_nvlabs_rejects_mismatched_state():
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)
    state = G.state_dict()
    kwargs = dict(
        z_dim=8,
        w_dim=8,
        img_resolution=16,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 128, "channel_max": 16},
    )
    del state["synthesis.b8.conv0.weight"]
    with pytest.raises(ValueError, match="synthesis.b8.conv0.weight"):
        import_nvlabs({"state_dict": state, "init_kwargs": kwargs})
    with pytest.raises(ValueError, match="c_dim"):
        import_nvlabs({"state_dict": G.state_dict(), "init_kwargs": {**kwargs, "c_dim": 10}})


def test_compare_state_dict_names_the_file_and_each_kind_of_mismatch():
    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    compare_state_dict(own, dict(own), "same.pt")  # an exact fit passes
    found = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "d": torch.zeros(1), "e": "not a tensor"}
    with pytest.raises(ValueError) as err:
        compare_state_dict(own, found, "x.pt: does not fit", fix="use the right file")
    assert str(err.value) == (
        "x.pt: does not fit: 1 missing weights ['c'], 2 unexpected ['d', 'e'], "
        "1 of other shapes ['a [3, 2] (expected [2, 3])']; use the right file"
    )
    with pytest.raises(ValueError, match=r"of other shapes \['c str \(expected \[1\]\)'\]"):
        compare_state_dict(own, {**own, "c": "x"}, "y.pt")


def test_non_finite_weights_are_refused_at_load():
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)
    state = G.state_dict()
    state["synthesis.b16.conv1.weight"] = state["synthesis.b16.conv1.weight"].clone()
    state["synthesis.b16.conv1.weight"][0, 0, 0, 0] = float("nan")
    kwargs = dict(z_dim=8, w_dim=8, img_resolution=16, mapping_kwargs={"num_layers": 2})
    kwargs.update(synthesis_kwargs={"channel_base": 128, "channel_max": 16})
    with pytest.raises(ValueError, match=r"1 weight tensor\(s\) hold NaN or infinity \['synthesis.b16.conv1.weight'\]"):
        import_nvlabs({"state_dict": state, "init_kwargs": kwargs})


def small_generator():
    torch.manual_seed(0)
    return Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)


def nvlabs_file(tmp_path, edit):
    from lightning_modules.io.exporters import export_nvlabs_state_dict

    data = export_nvlabs_state_dict(small_generator())
    edit(data["init_kwargs"])
    torch.save(data, tmp_path / "g.pt")
    return tmp_path / "g.pt"


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda kw: kw.update(z_dim="8"), "z_dim is '8', not an integer in 1..4096"),
        (lambda kw: kw.update(w_dim=-1), "w_dim is -1, not an integer"),
        (lambda kw: kw.update(w_dim=True), "w_dim is True, not an integer"),
        (lambda kw: kw.update(w_dim=[8]), r"w_dim is \[8\], not an integer"),
        (lambda kw: kw.update(w_dim=30000), "w_dim is 30000, not an integer in 1..4096"),
        (lambda kw: kw.update(img_resolution=0), "img_resolution is 0, not an integer in 4..4096"),
        (lambda kw: kw.update(img_resolution=33), "img_resolution is 33, not a power of 2"),
        (lambda kw: kw.update(img_resolution=100), "img_resolution is 100, not a power of 2"),
        (lambda kw: kw.update(img_resolution=65536), "img_resolution is 65536, not an integer in 4..4096"),
        (lambda kw: kw.update(img_channels=1), "img_channels is 1: only RGB generators"),
        (lambda kw: kw.pop("z_dim"), r"init_kwargs lack \['z_dim'\]"),
        (lambda kw: kw["mapping_kwargs"].update(num_layers=[2]), r"mapping_layers is \[2\]"),
        (lambda kw: kw["synthesis_kwargs"].update(channel_base=2**26), "channel_base is 67108864, not an integer"),
        (lambda kw: kw["synthesis_kwargs"].update(channel_base=2**20, channel_max=2**16), "channel_max is 65536"),
        (lambda kw: kw["synthesis_kwargs"].update(channel_base=2**20, channel_max=4096), "more than the 268 M allowed"),
        (
            lambda kw: kw.update(w_dim=4096, z_dim=4096, mapping_kwargs={"num_layers": 32}),
            "537 M parameters .2.0 GiB; w_dim 4096",
        ),
        (lambda kw: kw["synthesis_kwargs"].update(conv_clamp="256"), "conv_clamp is '256', not None or a positive"),
        (lambda kw: kw["mapping_kwargs"].update(w_avg_beta=float("nan")), "w_avg_beta is nan, not a number in 0..1"),
    ],
)
def test_every_generator_file_field_is_checked_before_anything_is_built(tmp_path, edit, words, monkeypatch):
    """Strings, lists, bools, negative and absurd numbers where NVlabs' init_kwargs hold numbers were tracebacks,
    a 4.4 GB allocation (w_dim 30000 in a 145 KB file) or an error blamed on lightning_modules/nets/stylegan2.py."""
    from lightning_modules.io import legacy

    path = nvlabs_file(tmp_path, edit)
    monkeypatch.setattr(legacy, "Generator", lambda **kw: pytest.fail(f"a Generator was built from {kw}"))
    with pytest.raises(ValueError, match=words) as err:
        legacy.load_pretrained(path)
    assert str(path) in str(err.value) and "stylegan2.py" not in str(err.value)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda sd: sd.pop("style.1.weight"), "'style.1.weight' is missing"),
        (lambda sd: sd.pop("conv1.conv.weight"), "'conv1.conv.weight' is missing"),
        (lambda sd: sd.update({"style.1.weight": sd["style.1.weight"][0]}), r"style.1.weight is .*8.*, not 2-d"),
    ],
)
def test_a_rosinality_file_without_its_tensors_is_named(tmp_path, edit, words):
    from lightning_modules.io.exporters import export_rosinality
    from lightning_modules.io.legacy import load_pretrained

    data = export_rosinality(small_generator())
    edit(data["g_ema"])
    torch.save(data, tmp_path / "ros.pt")
    with pytest.raises(ValueError, match=words) as err:
        load_pretrained(tmp_path / "ros.pt")
    assert str(tmp_path / "ros.pt") in str(err.value)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda st: st["hyper_parameters"].pop("img_resolution"), "img_resolution is None, not an integer"),
        (lambda st: st.update(state_dict={k: v for k, v in st["state_dict"].items() if "G_ema." not in k}), "no G_ema"),
        (lambda st: st["hyper_parameters"]["generator"].update(channel_base=2**26), "channel_base is 67108864"),
    ],
)
def test_a_voice2face_checkpoint_that_cannot_hold_a_generator_is_named(tmp_path, edit, words):
    """Without img_resolution or G_ema weights, or with channel_base 2^26 (a 38 GB G): tracebacks before."""
    from test_evaluate import smoke_checkpoint

    from lightning_modules.io.legacy import load_pretrained

    path = smoke_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=words) as err:
        load_pretrained(path)
    assert str(path) in str(err.value)
