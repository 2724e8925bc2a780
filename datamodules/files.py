"""Files of the data layer: the data error, why a path cannot be read, the table reader, atomic writes."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import glob
import hashlib
import json
import os
import secrets
import shutil
import socket
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


def unwritable_reason(folder) -> str | None:
    """None where `folder` can be made (if missing) and written; else why not: a name past the file system's
    limit, a file where a folder belongs, or a read-only place. Nothing is created."""
    folder = Path(os.path.abspath(folder))
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    too_long = [part for part in folder.parts if len(os.fsencode(part)) > name_max]
    if too_long:
        size = len(os.fsencode(too_long[0]))
        return f"a folder name of {size} bytes ({too_long[0][:24]}...) passes the file system's limit of {name_max}"
    if len(os.fsencode(str(folder))) >= os.pathconf(existing, "PC_PATH_MAX"):
        return f"the path passes the file system's limit of {os.pathconf(existing, 'PC_PATH_MAX')} bytes"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only for this user"
    return None


def read_table(path: Path, literal_quotes: bool = False) -> tuple[str, list[tuple[int, dict]], list[str]]:
    """(header line, [(line number, row)], column names) of a tab- or comma-separated text file, as a hand-edited
    CSV can come: a UTF-8 byte order mark (Excel, Notepad) is dropped, not taken into the first column's name;
    non-UTF-8 text is refused with the byte; line numbers count blank lines. With `literal_quotes` a `"` is an
    ordinary character; otherwise quoting is csv's, and a field that spans lines (an unbalanced quote, which would
    swallow the rows after it into one value) is refused with its lines."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            head = f.readline()
            f.seek(0)
            quoting = csv.QUOTE_NONE if literal_quotes else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter="\t" if "\t" in head else ",", quoting=quoting)
            numbered, first = [], 2
            for row in reader:
                if any("\n" in v or "\r" in v for v in row.values() if isinstance(v, str)):
                    raise DataError(
                        f'{path}: lines {first}-{reader.line_num} are one row (an unbalanced quote "); '
                        "close or remove the quote"
                    )
                numbered.append((reader.line_num, row))
                first = reader.line_num + 1
            columns = [c.strip() for c in reader.fieldnames or []]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:  # e.g. a field above csv's 128 KiB limit: no table of ours holds one
        raise DataError(f"{path}: line {reader.line_num + 1}: {err}; is this the right file?") from None
    return head, numbered, columns


def refuse_repeats(path: Path, numbered: list[tuple[int, dict]], column: str, what: str) -> None:
    """A `column` value on two lines of the table `path` (the later row would silently win) is refused with
    the lines of the first five repeated values."""
    lines: dict[str, list[int]] = {}
    for line, row in numbered:
        lines.setdefault((row.get(column) or "").strip(), []).append(line)
    repeated = {v: ls for v, ls in lines.items() if len(ls) > 1}
    if repeated:
        shown = "; ".join(f"{v!r} on lines {ls}" for v, ls in list(repeated.items())[:5])
        raise DataError(
            f"{path}: {len(repeated)} {column} value(s) appear more than once ({shown}); each {what} must be "
            "on exactly one line"
        )


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) then rename onto `path`: readers see the old file or the whole new one. `write` may make a
    folder there instead (a model folder): it then replaces the folder at `path`, whole. The temporary name is
    hidden, and short (a name near the file system's 255-byte limit still fits); it ends in a suffix of its own
    after the file's name, because torch.save names the archive inside a file after its name without the suffix
    (a random name would change a shard's bytes from run to run)."""
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}-{secrets.token_hex(2)}")
    try:
        write(tmp)
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # a folder cannot be renamed onto another
        os.replace(tmp, path)
    except RuntimeError as err:
        if "enforce fail" not in str(err):  # torch.save reports a failed write (a full disk) as a C++ enforce fail
            raise
        raise OSError(
            f"{path}: could not be written ({str(err).splitlines()[0][:160]}); is the disk full? Free space "
            "and rerun (what was written before stays as it was)"
        ) from err
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _temporary_prefix(path: Path) -> str:
    """The name of write_atomic's temporaries of `path` up to the writer's pid."""
    name = path.name if len(path.name) < 160 else f"{path.name[:80]}-{hashlib.sha1(path.name.encode()).hexdigest()[:8]}"
    return f".{name}.tmp"


def remove_dead_temporaries(path: Path) -> None:
    """Remove the temporaries of `path` that write_atomic left in processes that are gone (a run killed while it
    saved a checkpoint leaves one as large as the checkpoint); those of live processes are theirs."""
    prefix = _temporary_prefix(path)
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        try:
            os.kill(int(tmp.name[len(prefix) :].split("-")[0]), 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            continue  # a live process of another user


def write_json(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n"))


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, fix: str):
    """Hold `folder` under an exclusive OS lock (`.lock` in it) while the block runs, so that a second writer is
    refused instead of mixing its files with ours; the OS releases it if the process dies. `what` names the
    folder's role and `fix` what the refused writer can do, in the message."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "a+")
    except OSError as err:
        raise OSError(f"{what} {folder} is not writable ({err.strerror or err}); {fix}") from err
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise BlockingIOError(f"{what} {folder} is in use by {holder}; {fix}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield folder
    finally:
        lock.close()
