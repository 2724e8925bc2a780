"""The check every loader of ours makes before `load_state_dict`: a file's tensors are exactly the network's, each
of its shape, or the error names what differs."""

import torch
from torch import nn

SHOWN = 5  # keys named per kind of mismatch; the counts say how many there are in all


def shape_of(value):
    """A tensor's shape as a list, else the name of what stands there (for error messages)."""
    return list(value.shape) if hasattr(value, "shape") else type(value).__name__


def compare_state_dict(expected: dict[str, torch.Tensor] | nn.Module, found: dict, what: str, fix: str = "") -> None:
    """Raise a ValueError unless `found` holds exactly the tensors of `expected` (a module or its state dict),
    each of the same shape. The error starts with `what` (the file and what it should have fit) and names a few
    missing, unexpected and other-shaped keys; `fix` (how to get a file that fits) ends it."""
    own = expected.state_dict() if isinstance(expected, nn.Module) else expected
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    reshaped = [
        f"{k} {shape_of(found[k])} (expected {shape_of(own[k])})"
        for k in sorted(set(own) & set(found))
        if shape_of(found[k]) != shape_of(own[k])
    ]
    problems = [
        f"{len(keys)} {kind} {keys[:SHOWN]}"
        for kind, keys in (("missing weights", missing), ("unexpected", unexpected), ("of other shapes", reshaped))
        if keys
    ]
    if problems:
        raise ValueError(f"{what}: {', '.join(problems)}" + (f"; {fix}" if fix else ""))
