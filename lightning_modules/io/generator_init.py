"""`model.generator_init`: a pretrained generator file (any format legacy.load_pretrained reads) checked against the
run before anything trains: its faces' size, and its D weights against the D its arguments build."""

from __future__ import annotations

import torch

from lightning_modules.io.legacy import load_pretrained
from lightning_modules.io.state_dict import compare_state_dict


def load_generator_init(path, img_resolution: int, impl: str = "auto"):
    """(G, D arguments, D weights) of model.generator_init (legacy.load_pretrained), refused unless its G draws
    faces of the run's size."""
    pretrained = load_pretrained(path, impl=impl)
    G = pretrained[0]
    if G.img_resolution != img_resolution:
        raise ValueError(
            f"{path}: a {G.img_resolution} px generator, but the faces are {img_resolution} px; prepare them at "
            f"its size (data.face_size={G.img_resolution})"
        )
    return pretrained


def check_trunk(D: torch.nn.Module, trunk: dict, source) -> None:
    """The D weights of a generator file against the D its arguments build (its identity head aside)."""
    own = {k: v for k, v in D.state_dict().items() if not k.startswith("classifier.")}
    compare_state_dict(own, trunk, f"{source}: its discriminator does not fit model.discriminator")
