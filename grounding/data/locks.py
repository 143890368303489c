"""One job per work dir (and per Ray storage run id): an exclusive lock file with its holder's name.

Why: two pipelines (or two trainings with the same run id) on one folder overwrite each other's
stages and Ray checkpoints without any error. The lock file holds JSON ``{host, pid, started,
command}`` (the command name only: no paths or patient data) and is ``flock``-ed while held.

Protocol (local and NFS file systems):

* acquire: write the record to a private temp file, ``flock`` it, then ``os.link`` it to the lock
  name (atomic, fails if the name exists), so the lock appears complete and already locked;
* an existing lock is alive when its ``flock`` is held (same host), or, for another host's lock,
  while its heartbeat (mtime, touched every ``heartbeat_s`` by a daemon thread) is younger than
  ``stale_after_s``; a live lock refuses with :class:`LockHeldError` naming the holder;
* a stale lock (holder dead: flock free on this host, or heartbeat too old) is taken over while
  holding its flock: our record is renamed over it, then the name is re-checked to be ours;
  a second process racing for the same stale lock finds the name changed and starts over;
* release: unlink the name (only if it is still ours), then close; the OS drops the flock when a
  process dies, which is what makes a dead holder detectable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HEARTBEAT_S = 60.0
STALE_AFTER_S = 300.0
WORK_DIR_LOCK = ".grounding.lock"


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it (pid, host, start time, command)."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str
    command: str

    @staticmethod
    def me(command: str) -> "Holder":
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Holder(socket.gethostname(), os.getpid(), now, command)

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.started} (command {self.command})"


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        d = json.loads(data)
        return Holder(str(d["host"]), int(d["pid"]), str(d["started"]), str(d["command"]))
    except (ValueError, KeyError, TypeError):
        return None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class FolderLock:
    """An exclusive, named lock file. Use :func:`exclusive` (a context manager) in jobs.

    Args:
        path: the lock file (its folder is created).
        label: what is locked, for the refusal message (e.g. ``work dir runs/x``).
        command: the holder's command name (``grounding pipeline``): never arguments.
    """

    def __init__(self, path: str | Path, label: str, command: str, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.path = Path(path).absolute()
        self.label = label
        self.command = command
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release ------------------------------------------------------------------
    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = self._write_record()
        try:
            for _ in range(20):  # a retry only follows a race that changed the lock name under us
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    if not self._take_over_if_stale(tmp, fd):
                        continue
                if not _same_file(self.path, fd):  # re-check: the name must be ours now
                    raise LockHeldError(f"{self.label}: lost the race for {self.path}; try again")
                self._fd = fd
                self._start_heartbeat()
                return self
            raise LockHeldError(f"{self.label}: could not acquire {self.path} (it keeps changing)")
        except BaseException:
            if self._fd is None:
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if _same_file(self.path, self._fd):  # never delete a lock someone took over from us
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals --------------------------------------------------------------------------
    def _write_record(self) -> tuple[int, Path]:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        os.write(fd, json.dumps(Holder.me(self.command).__dict__).encode())
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh inode: never blocks
        return fd, tmp

    def _take_over_if_stale(self, tmp: Path, fd: int) -> bool:
        """Raise if the existing lock is alive; else rename ours over it. False = look again."""
        try:
            old = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False  # released meanwhile
        try:
            holder = _read_holder(old)
            if not _try_flock(old):
                raise self._held(holder)
            if not _same_file(self.path, old):
                return False  # replaced while we opened it
            holder = _read_holder(old)  # now stable: nobody else can take it over while we hold its flock
            if holder is not None and holder.host != socket.gethostname():
                age = time.time() - os.fstat(old).st_mtime
                if age < self.stale_after_s:  # flock may not cross hosts: trust the heartbeat
                    raise self._held(holder, f"; heartbeat {age:.0f} s ago")
            os.rename(tmp, self.path)
            return True
        finally:
            os.close(old)

    def _held(self, holder: Holder | None, extra: str = "") -> LockHeldError:
        who = holder.describe() if holder else "another process (lock record being written)"
        return LockHeldError(f"{self.label} is in use by {who}{extra}; lock file {self.path}")

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                if self._fd is not None and _same_file(self.path, self._fd):
                    with contextlib.suppress(OSError):
                        os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
        self._thread.start()


@contextlib.contextmanager
def exclusive(path: str | Path, label: str, command: str, **kw) -> Iterator[FolderLock]:
    """Hold ``path`` as an exclusive lock for the block; raise :class:`LockHeldError` if held."""
    lock = FolderLock(path, label, command, **kw)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def work_dir_lock_path(work_dir: str | Path) -> Path:
    return Path(work_dir, WORK_DIR_LOCK)


def run_lock_path(storage_path: str, run_id: str, work_dir: str | Path) -> Path:
    """``<storage>/<run_id>.lock`` next to Ray's run folder; for URI storage a local stand-in in the work dir."""
    if "://" in storage_path:
        return Path(work_dir, f".run-{run_id}.lock")
    return Path(storage_path, f"{run_id}.lock")
