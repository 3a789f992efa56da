"""One run per ``--out``: a second run is refused at once naming the lock; a dead run's lock is taken over."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from medforget.commands import train
from medforget.core.runlock import LOCK_NAME, RunLock, RunLockedError
from tests.conftest import TINY_DATA, TINY_MODEL


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_lock_is_refused_and_released(tmp_path):
    with RunLock(tmp_path, "train") as lock:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert lock.held and owner["verb"] == "train" and isinstance(owner["pid"], int)
        with pytest.raises(RunLockedError, match=f"lock file {tmp_path / LOCK_NAME} held by pid {owner['pid']}"):
            RunLock(tmp_path, "unlearn").acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path, "unlearn").acquire().release()  # free again


def test_lock_held_by_another_process_is_refused(tmp_path):
    code = ("import sys, time; from medforget.core.runlock import RunLock; RunLock(sys.argv[1], 'train').acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(tmp_path, "train").acquire()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the flock, the lock file stays behind
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, "train"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != holder.pid


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "h", "verb": "train", "started": "t"}))
    with caplog.at_level(logging.WARNING, logger="medforget"), RunLock(tmp_path, "unlearn"):
        pass
    assert f"taking over the stale lock {tmp_path / LOCK_NAME}" in caplog.text and f"pid {pid}" in caplog.text


def test_taking_over_a_stale_lock_removes_the_dead_runs_temporary_files(tmp_path, caplog):
    """A run killed during an atomic write leaves ``.<name>.<random>.tmp``; the next run in the folder removes it and
    nothing else (a live run's folder is never swept: its lock is refused first)."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": "h", "verb": "train", "started": "t"}))
    left = tmp_path / ".model.ckpt.k2j4x9.tmp"
    left.write_bytes(b"half a checkpoint")
    (tmp_path / "audit").mkdir()
    nested = tmp_path / "audit" / ".audit.json.abc.tmp"
    nested.write_text("{")
    kept = [tmp_path / "model.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in kept:
        path.write_text("mine")
    with caplog.at_level(logging.WARNING, logger="medforget"), RunLock(tmp_path, "train"):
        assert not left.exists() and not nested.exists()
    assert all(path.read_text() == "mine" for path in kept)
    assert f"removed {left}" in caplog.text
    # a lock released cleanly is not stale: nothing is swept
    fresh = tmp_path / ".model.ckpt.zz.tmp"
    fresh.write_text("x")
    with RunLock(tmp_path, "train"):
        assert fresh.exists()


def test_train_into_a_locked_out_is_refused_at_once(tiny_hospital, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--out={out}"]
    with RunLock(out, "train"):
        with pytest.raises(RunLockedError, match=str(out / LOCK_NAME)):
            train(args)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else was written
    assert train(args).is_file()  # the verb released its own lock...
    assert not (out / LOCK_NAME).exists()  # ...and removed the file
