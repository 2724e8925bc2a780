"""Files of the data layer: the data error, why a path cannot be read, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path


class DataError(ValueError):
    """Bad or missing data; the message names the file or folder and the fix."""


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


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) then rename onto `path`: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except RuntimeError as err:  # torch.save reports a failed write (a full disk) as a C++ "enforce fail"
        raise OSError(
            f"{path}: could not be written ({str(err).splitlines()[0][:160]}); is the disk full? Free "
            "space and rerun: finished shards are kept"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n"))
