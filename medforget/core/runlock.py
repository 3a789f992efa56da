"""One run per output folder: ``<out>/medforget.lock`` holds the owner's pid and an exclusive ``flock``.

A second ``train`` / ``unlearn`` / ``evaluate`` into the same ``--out`` is refused at once with an error naming the
lock and its owner. The kernel drops the ``flock`` when its process dies (even by SIGKILL), so a lock file left by a
dead run is stale: the next run takes it over with a warning (``--ckpt_path last`` after a crash just works).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("medforget")

LOCK_NAME = "medforget.lock"


class RunLockedError(FileExistsError):
    """Another live run holds the output folder's lock; the message names the lock file and its owner."""


def _is_secondary_rank() -> bool:
    """Lightning's DDP launcher re-runs the command line for the other ranks: only rank 0 takes the lock."""
    return any(int(os.environ.get(var, "0") or 0) > 0 for var in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _owner(text: str) -> dict[str, Any]:
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown owner"
    return f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('verb')}, since {owner.get('started')})"


class RunLock:
    """The lock of one output folder; a context manager (``with RunLock(out, "train"):``) or
    :meth:`acquire` / :meth:`release`. Re-entrant within one object, not between objects or processes."""

    def __init__(self, out: str | Path, verb: str) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.verb = verb
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None or _is_secondary_rank():
            return self
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise RunLockedError(
                    f"{self.out} is in use by another medforget run: lock file {self.path} held by "
                    f"{_describe(owner)}; wait for it to finish or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # released and removed while we opened it
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            break
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            log.warning("taking over the stale lock %s left by %s, which is no longer running", self.path,
                        _describe(_owner(previous)))
            # a run killed during an atomic write leaves its temporary file (.<name>.<random>.tmp) beside the target;
            # the writer is dead and this run now owns the folder, so nothing else can be writing it
            for stale in sorted(self.out.rglob(".*.tmp")):
                if stale.is_file():
                    stale.unlink(missing_ok=True)
                    log.warning("removed %s, the temporary file of an interrupted write", stale)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD.append(self)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self in _HELD:
            _HELD.remove(self)
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: nobody else owns this file yet
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: list[RunLock] = []


def releasing_locks(fn: Any) -> Any:
    """Decorator of a verb's function: every :class:`RunLock` acquired while it runs is released when it returns or
    raises (in-process callers such as ``demo`` and the tests run several verbs one after another)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark = len(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_HELD) > mark:
                _HELD.pop().release()

    return wrapper
