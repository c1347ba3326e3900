"""Atomic, durable file writing: a reader sees the old complete file or the new
complete file, never a partial one, even after a crash or a power cut.

Every output of the project (adapters, checkpoints, results, reports, figures)
is written through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Outputs are meant to be read by other people and tools (0644 under the usual umask),
# not private like the 0600 that some writers give their files.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, fsync it and
    rename it into place, then fsync the folder so the rename itself survives a crash.

    The temporary name keeps ``path``'s suffix (matplotlib and safetensors choose the
    format from it) and holds the process id, so concurrent writers never collide.
    A file system error (a full disk, a read-only folder) is raised as the same kind of
    ``OSError`` naming ``path``; the file that was there before is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno is not None and str(path) not in str(err):
            raise type(err)(err.errno, f"cannot write {path}: {err.strerror}; files written before are "
                                       "intact") from err
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform can open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

