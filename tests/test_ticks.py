"""Tick lines (lightning_modules/callbacks/ticks.py): the line NVlabs' users read, and when it is printed."""

import io

from lightning_modules.callbacks.ticks import TickLines, tick_line


def test_the_line_has_every_figure_in_order():
    figures = {"kimg": 4.031, "s/kimg": 27.94, "img/s": 35.79, "loss D": 1.214, "loss G": 0.93, "mem GiB": 1.8}
    line = tick_line({**figures, "eta s": 372.4})
    assert line == "kimg 4.03 | 27.9 s/kimg | 35.8 img/s | loss D 1.21 G 0.93 | mem 1.8 GiB | eta 6 min 12 s"
    assert tick_line({"step": 40, "s/step": 0.213, "loss": 2.5, "mem GiB": 0.5}) == (
        "step 40 | 0.21 s/step | loss 2.500 | mem 0.5 GiB"
    )
    assert tick_line({**figures, "eta s": 3 * 3600 + 125}).endswith("eta 3 h 2 min")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_go_where_no_terminal_is():
    assert TickLines(stream=io.StringIO()).active()
    assert not TickLines(stream=_Terminal()).active()  # the progress bar shows the figures there
    assert TickLines(stream=_Terminal(), only_without_terminal=False).active()
