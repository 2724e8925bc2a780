"""Why a path handed to us as a file cannot be read, in words (one reason per kind of problem)."""

from __future__ import annotations

import errno
import os
import stat


def unreadable_reason(path) -> str | None:
    """None for a readable regular file (a symlink to one included); else what is wrong with `path`."""
    try:
        info = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        return "a broken symlink (its target does not exist)" if os.path.islink(path) else "no such file"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself)"
        return f"cannot be inspected ({err.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "not a regular file (a device or socket)"
        return f"{kind}; point to the file itself"
    if not os.access(path, os.R_OK):
        return "permission denied (not readable by this user)"
    return None
