"""The rosinality and NVlabs importers: agreement with the public code's outputs, and a safe unpickler."""

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from conftest import Persisted

from lightning_modules.legacy import compare_state_dict, import_nvlabs, import_rosinality
from lightning_modules.stylegan2 import Generator

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
    kwargs = dict(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 128, "channel_max": 16},
    )
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16, impl="torch")
    for p in G.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    G.mapping.w_avg.normal_()
    path = tmp_path / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {
                "G": Persisted(G, kwargs),
                "D": None,
                "G_ema": Persisted(G, kwargs),
                "augment_pipe": None,
                "training_set_kwargs": nvlabs_modules.EasyDict(resolution=16),
            },
            f,
        )
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
