"""One process per run folder, and SIGTERM handled like Ctrl-C (issue 21, class 5).

`run_lock(folder)`: a context manager holding `folder/.tasktune.lock` for the block. The file is locked with
`flock` (the kernel drops the lock when its process dies, however it dies) and names its holder (pid, host,
command, start time). A second process asking for the same folder gets a `RunLocked` error naming the holder;
a lock file left by a dead process is simply taken over; the file is removed when the block ends. The lock
file is opened without following a link.

`sigterm_as_interrupt()`: for the block, the first SIGTERM raises `Terminated` (a KeyboardInterrupt) in the
main thread, so code that saves its work on Ctrl-C does so on SIGTERM too (what SLURM and Kubernetes send
before they kill); `tasktune.cli.main` exits 143 (128 + 15) for it. Further SIGTERMs while that save runs are
ignored; the previous handler comes back when the block ends. A raise can be swallowed where Python runs the
handler inside a finalizer or a library that catches everything ("Exception ignored in ..."); a loop that must
stop therefore also calls `raise_if_terminated()` at its safe points, which raises `Terminated` once for a
SIGTERM whose raise never reached it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from tasktune.errors import ConfigError, Terminated

LOCK_NAME = ".tasktune.lock"


class RunLocked(ConfigError):
    """Another live process holds the run folder."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], what: str = "train") -> Iterator[Path]:
    """Hold `folder`'s run lock for the block (the folder is created if missing); RunLocked if a live process
    holds it."""
    folder = Path(folder)
    created = not os.path.lexists(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(folder / LOCK_NAME, what, folder, "run folder") as path:
            yield path
    finally:
        if created:  # a run refused before it wrote anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def file_lock(path: Path, what: str, target: Path, kind: str = "folder") -> Iterator[Path]:
    """Hold the lock file `path` (created; removed at the end) for the block, for work on `target` (a `kind`,
    named in the refusal): RunLocked naming the live holder, else the lock is taken over."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot open the lock ({exc.strerror or exc}); a symbolic link or "
                              "another file there? remove it and run again") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLocked(
                f"{target}: another `tasktune {holder.get('command', what)}` is using this {kind} (pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}; "
                f"lock file {path}). Wait for it to finish or stop it, or use another --out folder") from None
        # the file may have been removed (by the holder's exit) between our open and our lock: lock the new one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                  "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the unlock: a waiting process then finds a fresh file (see the loop above)
        os.close(fd)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the block, the first SIGTERM raises `Terminated` (see the module's doc). Outside the main thread
    (where Python cannot set handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def handler(signum, frame):
        if _sigterm["fired"]:
            return  # the save started by the first one is running: let it finish
        _sigterm["fired"] = True
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    _sigterm.update(fired=False, delivered=False)
    try:
        yield
    except Terminated:
        _sigterm["delivered"] = True
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _sigterm.update(fired=False, delivered=False)


# the SIGTERM state of the running `sigterm_as_interrupt` block (one per process: signals are per process)
_sigterm = {"fired": False, "delivered": False}


def raise_if_terminated() -> None:
    """Raise `Terminated` when a SIGTERM came in this block but its raise was swallowed on the way (see the
    module's doc); once only, so the save that follows runs undisturbed."""
    if _sigterm["fired"] and not _sigterm["delivered"]:
        _sigterm["delivered"] = True
        raise Terminated("terminated by SIGTERM")
