"""One owner per folder: the exclusive lock that run folders, sweeps, the image cache
and ``vtab-report`` take before they write.

A :class:`FolderLock` is an advisory ``flock`` on a lock file inside the folder
(``.elalora.lock``).  The operating system releases it when its process ends, however
it ends (SIGKILL included), so a lock is never left behind by a dead process and no
staleness rule is needed: the next process simply takes it.  The file holds the
holder's pid, host and start time, only to say who holds it in messages; it is never
deleted, so two processes can never lock two different files of one name.

Limits: ``flock`` is advisory (a process that does not ask is not stopped); it works
across processes of one machine and, on Linux, on NFS v4 mounts (the kernel maps it
to an NFS byte-range lock); on older NFS versions or file systems without lock
support, taking the lock raises :class:`LockUnavailable` with the file system's
error rather than silently not locking.  Platforms without ``fcntl`` (Windows) get
a lock by exclusive creation of the file, which a killed process leaves behind:
there a lock whose holder's pid no longer runs on this host is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".elalora.lock"


class FolderLocked(RuntimeError):
    """The folder is locked by another live process; the message names it."""

    def __init__(self, folder: Path, holder: dict[str, Any] | None):
        self.folder = folder
        self.holder = holder or {}
        doing = f" ({self.holder['what']})" if self.holder.get("what") else ""
        super().__init__(f"{folder} is in use by {describe_holder(self.holder)}{doing}; "
                         "wait for it to finish, or stop it first")


class LockUnavailable(OSError):
    """The file system cannot lock (read-only folder, no lock support)."""


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    since = holder.get("since")
    started = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{started}"


# The locks this process holds: lock file -> [fd, holders].  A process that already holds a
# folder (a sweep deciding what to do with a run, then training it) takes it again at no cost.
_HELD: dict[str, list[int]] = {}


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing), held until :meth:`release`.

    ``what`` says what the holder is doing ("training", "building the image cache"),
    for the message a second process gets.  Use as a context manager, or call
    :meth:`acquire` / :meth:`release`.  Re-entrant within a process: a folder this
    process already holds is taken again (and released when every taker has released it).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "working on it"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._key = os.path.abspath(self.path)
        self._holding = False

    @property
    def held(self) -> bool:
        return self._holding

    def acquire(self, *, timeout: float = 0.0, poll: float = 0.1) -> "FolderLock":
        """Take the lock, waiting up to ``timeout`` seconds (0: try once).

        Raises:
            FolderLocked: another live process holds it after ``timeout``.
            LockUnavailable: the folder cannot be created or locked.
        """
        if self._holding:
            return self
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            self._holding = True
            return self
        deadline = time.monotonic() + timeout
        while True:
            if self._try_acquire():
                return self
            if time.monotonic() >= deadline:
                raise FolderLocked(self.folder, self.holder())
            time.sleep(poll)

    def _try_acquire(self) -> bool:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if fcntl is None:  # pragma: no cover - Windows
                return self._try_create()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LockUnavailable(f"cannot lock {self.folder}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as err:
            os.close(fd)
            raise LockUnavailable(f"cannot lock {self.folder} ({self.path.name}): {err.strerror or err}") from err
        if not _still_the_file(fd, self.path):  # its holder removed it (remove_folder_if_empty) meanwhile
            os.close(fd)
            return False
        self._took(fd)
        return True

    def _took(self, fd: int) -> None:
        _HELD[self._key] = [fd, 1]
        self._holding = True
        self._write_holder(fd)

    def _try_create(self) -> bool:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self.holder()
            if holder and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
                self.path.unlink(missing_ok=True)  # its holder died without releasing it
                return self._try_create()
            return False
        self._took(fd)
        return True

    def _write_holder(self, fd: int) -> None:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3),
                           "what": self.what}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as its file says; None if unknown."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        fd = _HELD.pop(self._key)[0]
        if fcntl is None:  # pragma: no cover - Windows
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def remove_folder_if_empty(self) -> bool:
        """While holding the lock, delete the lock file and the folder when nothing else is in
        it (a run that stopped before writing anything leaves no folder behind); True if removed.
        Safe against waiting processes: one that locks the removed file sees it is gone and retries."""
        if not self._holding or _HELD[self._key][1] > 1:
            return False
        try:
            if any(p.name != LOCK_NAME for p in self.folder.iterdir()):
                return False
            self.path.unlink()
            self.folder.rmdir()
        except OSError:
            return False
        return True

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release must not keep the folder
        try:
            self.release()
        except Exception:
            pass


def _still_the_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
