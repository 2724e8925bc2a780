"""A network snapshot written by NVlabs stylegan2-ada-pytorch's own training code (../shared/reference/
nvlabs_snapshot_64.pkl: numpy scalars in its layers, fp16 resolutions, conv_clamp, an EasyDict of dataset
arguments) read as data by every command that takes a generator file, against NVlabs' own outputs for it; and the
numpy globals of such pickles: numbers read, anything else refused."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Persisted
from test_export import export_command
from test_hires import hires_model, train
from test_project import config as project_config
from test_project import make_corpus

from experiments.project import run as project_run
from lightning_modules.io.legacy import load_generator, load_pretrained
from lightning_modules.nets.stylegan2 import Discriminator, Generator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
SNAPSHOT = SHARED / "nvlabs_snapshot_64.pkl"
EXPECTED = SHARED / "nvlabs_snapshot_64_expected.pt"
TOL = 1e-4  # NVlabs' outputs, computed on a CPU in float32


@pytest.fixture(scope="module")
def expected():
    if not (SNAPSHOT.is_file() and EXPECTED.is_file()):
        pytest.skip(f"{SNAPSHOT} and its expected outputs are absent (../shared is not checked out)")
    return torch.load(EXPECTED, weights_only=True)


def _max_diff(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_generator_matches_nvlabs_mapping_images_and_truncation(expected):
    G = load_generator(SNAPSHOT, impl="torch")
    assert (G.num_ws, G.w_dim, G.synthesis.img_resolution) == (10, 32, 64)
    assert _max_diff(G.mapping(expected["z"]), expected["ws"]) <= TOL
    assert _max_diff(G.synthesis(expected["ws"], noise_mode="const"), expected["img"]) <= TOL
    img = G(expected["z"], truncation_psi=0.5, noise_mode="const")
    assert _max_diff(img, expected["img_trunc_0.5"]) <= TOL


@torch.no_grad()
def test_the_discriminator_trunk_matches_nvlabs_logits(expected):
    """The snapshot's D runs its two highest resolutions in float16 (num_fp16_res=2; NVlabs' D does so on a CPU
    too): ours with the same setting gives its logits; in float32 throughout it differs by about 5e-4."""
    G, d_kwargs, d_state = load_pretrained(SNAPSHOT, impl="torch")
    assert d_kwargs == {"channel_base": 512, "channel_max": 32, "mbstd_group_size": 4, "conv_clamp": 256}
    D = Discriminator(img_resolution=64, num_fp16_res=2, impl="torch", **d_kwargs)
    D.load_state_dict(d_state)
    logits, _ = D(expected["img"])
    assert _max_diff(logits, expected["D_logits"][:, 0]) <= TOL
    D32 = Discriminator(img_resolution=64, impl="torch", **d_kwargs)
    D32.load_state_dict(d_state)
    assert _max_diff(D32(expected["img"])[0], expected["D_logits"][:, 0]) <= 2e-3


def test_a_wplus_run_starts_from_the_snapshot(expected, tmp_path):
    """+exp=hires_cpu's route (voice through W+ of a frozen pretrained G, D trunk from its D) on the snapshot."""
    model = hires_model(
        SNAPSHOT,
        64,
        generator_train="frozen",
        discriminator={"_target_": "lightning_modules.nets.stylegan2.Discriminator"},
    )
    _, _, d_state = load_pretrained(SNAPSHOT)
    assert all(torch.equal(model.D.state_dict()[k], v) for k, v in d_state.items())
    before = model.G.synthesis.state_dict()
    train(model, 64, tmp_path)
    assert model.iteration == 2
    assert all(torch.equal(before[k], v) for k, v in model.G.synthesis.state_dict().items()), "a frozen G moved"


def test_project_accepts_the_snapshot(expected, tmp_path, empty_hub):
    images, out = make_corpus(tmp_path / "faces"), tmp_path / "out"
    assert project_run(project_config(G=SNAPSHOT, images=images, out=out, steps=2, batch=4, device="cpu")) == 0
    assert np.load(out / "identity_idA.npy").shape == (10, 32)


def test_export_reads_the_snapshot_and_refuses_what_rosinality_cannot_hold(expected, tmp_path, monkeypatch, capsys):
    out = tmp_path / "g.pt"
    code, stdout, _ = export_command(monkeypatch, capsys, f"ckpt={SNAPSHOT}", "format=nvlabs-state-dict", f"out={out}")
    assert code == 0 and "read back bit for bit" in stdout
    with torch.no_grad():
        img = load_generator(out, impl="torch").synthesis(expected["ws"], noise_mode="const")
    assert _max_diff(img, expected["img"]) <= TOL
    code, _, stderr = export_command(monkeypatch, capsys, f"ckpt={SNAPSHOT}", "format=rosinality", f"out={out}.ros")
    assert code == 1 and "conv_clamp=256" in stderr


# ------------------------------------------------------------------------------------------------------------
# numpy globals, written here: numpy 1.x names as the public pickles of 2020-2021 have them, and refusals.
# ------------------------------------------------------------------------------------------------------------


class AugmentPipe(torch.nn.Module):
    """NVlabs' ADA pipeline as a snapshot holds it: a persistent module with a probability buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("p", torch.tensor(0.3))


def _pickle_with_numpy_scalars(path, numpy1):
    """A small NVlabs-layout pickle whose G arguments hold numpy int64 / float64 / bool scalars, with an
    augment_pipe object, at protocol 3 (GLOBAL opcodes as text) so that numpy 2's module name can be rewritten to
    numpy 1's."""
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)
    kwargs = dict(z_dim=np.int64(8), c_dim=0, w_dim=8, img_resolution=16, img_channels=3, use_x=np.bool_(True))
    mapping = {"num_layers": 2, "lr_multiplier": np.float64(0.01)}
    kwargs.update(mapping_kwargs=mapping, synthesis_kwargs={"channel_base": 128, "channel_max": 16})
    nets = {"G_ema": Persisted(G, kwargs), "augment_pipe": Persisted(AugmentPipe(), {"xflip": np.float64(1.0)})}
    data = pickle.dumps(nets, protocol=3)
    assert b"cnumpy._core.multiarray\nscalar\n" in data
    if numpy1:
        data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    path.write_bytes(data)
    return G


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2", "numpy1"])
def test_numpy_scalars_of_either_numpy_are_read_as_numbers(tmp_path, numpy1, nvlabs_modules):
    path = tmp_path / "network-snapshot.pkl"
    G = _pickle_with_numpy_scalars(path, numpy1)
    imported = load_generator(path, impl="torch")
    assert imported.mapping.z_dim == 8
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(imported(z, noise_mode="const"), G(z, noise_mode="const"), rtol=0, atol=0)


class _ObjectScalar:
    """A numpy scalar of the object dtype: numpy's own `scalar` global, rebuilding a Python object."""

    def __reduce__(self):
        return np._core.multiarray.scalar, (np.dtype(object), ("payload",))


@pytest.mark.parametrize(
    "payload, words",
    [
        (_ObjectScalar(), r"refusing numpy dtype 'O8': only number dtypes"),
        (np.array([1, "a", None], dtype=object), r"refusing to load global numpy._core.multiarray._reconstruct"),
        (np.array([1.0, 2.0]), r"refusing to load global numpy._core.multiarray._reconstruct"),
        (np.dtype([("a", "f4"), ("b", "O")]), r"refusing numpy dtype 'V\d+'"),
    ],
    ids=["object-scalar", "object-array", "float-array", "record-dtype"],
)
def test_other_numpy_objects_are_refused(tmp_path, payload, words):
    path = tmp_path / "numpy.pkl"
    buf = io.BytesIO()
    pickle.dump({"G_ema": payload}, buf, protocol=3)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=rf"numpy.pkl: not a loadable NVlabs network pickle: {words}"):
        load_generator(path)


class _Shared(torch.nn.Module):
    """A module whose two children are one module: 40 of them nested share 2^40 paths."""

    def __init__(self, child=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        if child is not None:
            self.a, self.b = child, child


def test_a_small_pickle_of_shared_or_self_referencing_modules_ends_quickly(tmp_path, nvlabs_modules):
    import time

    top = type("Generator", (_Shared,), {})  # the class name the importer asks of G_ema
    module = _Shared()
    for _ in range(39):
        module = _Shared(module)
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Persisted(top(module), {"z_dim": 8})}))
    assert path.stat().st_size < 20_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"shared.pkl: .*more than 100000 module paths or is deeper than 64"):
        load_generator(path)
    assert time.perf_counter() - start < 10
    chain = _Shared()
    for _ in range(100):
        chain = _Shared(chain)
        del chain._modules["b"]
    path.write_bytes(pickle.dumps({"G_ema": Persisted(top(chain), {"z_dim": 8})}))
    with pytest.raises(ValueError, match=r"deeper than 64"):
        load_generator(path)
