"""The folder lock: one owner per folder, across processes, released by the OS on death."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from elalora_vit.storage.lock import LOCK_NAME, FolderLock, FolderLocked, LockUnavailable

HOLD = textwrap.dedent(
    """
    import sys, time
    from elalora_vit.storage.lock import FolderLock
    lock = FolderLock(sys.argv[1], "holding it for a test").acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


TRY = textwrap.dedent(
    """
    import sys
    from elalora_vit.storage.lock import FolderLock, FolderLocked
    try:
        FolderLock(sys.argv[1]).acquire()
    except FolderLocked as err:
        print("refused:", err)
    else:
        print("taken")
    """
)


def _try_from_another_process(folder) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, check=True).stdout


def test_second_process_is_refused_and_told_who_holds_the_folder(tmp_path):
    with FolderLock(tmp_path / "run", "training"):
        out = _try_from_another_process(tmp_path / "run")
        assert out.startswith("refused:"), out
        assert f"process {os.getpid()}" in out and "(training)" in out and str(tmp_path / "run") in out
    assert _try_from_another_process(tmp_path / "run").strip() == "taken"  # free again


def test_lock_is_reentrant_within_a_process_and_held_until_the_last_release(tmp_path):
    outer = FolderLock(tmp_path, "sweep").acquire()
    inner = FolderLock(tmp_path, "training").acquire()  # the same process: no deadlock, no refusal
    inner.release()
    assert _try_from_another_process(tmp_path).startswith("refused:")  # the outer taker still holds it
    outer.release()
    assert _try_from_another_process(tmp_path).strip() == "taken"


def test_lock_held_by_another_process_then_taken_over_after_sigkill(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == proc.pid and holder["what"] == "holding it for a test"
        with pytest.raises(FolderLocked, match=f"process {proc.pid}"):
            FolderLock(tmp_path).acquire(timeout=0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The OS released the dead process's lock: no staleness rule, the next process just takes it.
    lock = FolderLock(tmp_path).acquire(timeout=5)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_acquire_waits_for_a_holder_that_finishes(tmp_path):
    proc = _holder_process(tmp_path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {proc.pid}"])
    FolderLock(tmp_path).acquire(timeout=20).release()
    proc.wait()
    assert time.monotonic() - started >= 0.4


def test_unwritable_folder_is_a_lock_error_naming_the_folder(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/elalora-lock-test"  # root writes anywhere but /proc
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        target = str(tmp_path / "ro" / "run")
    with pytest.raises(LockUnavailable, match="cannot lock"):
        FolderLock(target).acquire()
