"""The training schedule in images seen: when the next periodic event (checkpoint, metrics, sample grid) is due."""

from __future__ import annotations


def next_due(nimg: int, every: float) -> float:
    """The first multiple of `every` images after `nimg` (a resumed run keeps the same grid of multiples);
    infinity when `every` <= 0 (the event is off, or runs only at the start and end)."""
    return (nimg // every + 1) * every if every > 0 else float("inf")
