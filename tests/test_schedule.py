"""The one schedule rule of periodic events (checkpoints, in-training metrics, sample grids)."""

import math

from lightning_modules.callbacks.schedule import next_due


def test_next_due_is_the_next_multiple_after_now_and_never_when_off():
    assert next_due(0, 4000) == 4000
    assert next_due(3999, 4000) == 4000
    assert next_due(4000, 4000) == 8000  # an event due at exactly now has just run
    assert next_due(4032, 4000) == 8000  # a resumed run keeps the grid of multiples, not now + every
    assert next_due(10, 0.5 * 1000) == 500
    assert math.isinf(next_due(123, 0)) and math.isinf(next_due(123, -1))
