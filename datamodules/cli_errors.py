"""One line per error a user can cause: the command-line entry points print `voice2face: <thing>: <problem>;
<fix>` and exit 1 instead of a Python traceback. `VOICE2FACE_DEBUG=1` (or Hydra's `HYDRA_FULL_ERROR=1`) shows
the traceback. Programming errors (TypeError, KeyError, ...) are not caught: those are ours to fix."""

from __future__ import annotations

import functools
import os
import sys

USER_ERRORS = (ValueError, OSError, FloatingPointError)  # bad files, configs, folders, disks, training faults


def debugging() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("VOICE2FACE_DEBUG", "HYDRA_FULL_ERROR"))


def message(err: BaseException) -> str:
    """`voice2face: ...` for an error; a disk-full or permission OSError without a file name gets a hint."""
    text = str(err).strip() or type(err).__name__
    hints = {
        28: "the disk is full; free space, or point paths.root_dir / out= elsewhere",
        13: "permission denied; choose a folder you can write to",
    }
    if isinstance(err, OSError) and err.errno in hints and err.filename is not None:
        text = f"{err.filename}: {hints[err.errno]}"
    elif isinstance(err, OSError) and err.errno in hints:
        text = f"{text} ({hints[err.errno]})"
    return text if text.startswith("voice2face:") else f"voice2face: {text}"


def one_line_errors(fn):
    """Wrap a command's main: a user-caused error becomes one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if debugging():
                raise
            print(message(err), file=sys.stderr)
            print("(VOICE2FACE_DEBUG=1 shows the traceback)", file=sys.stderr)
            sys.exit(1)

    return wrapper
