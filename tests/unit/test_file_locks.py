"""The one flock of the project (fileio.lock_exclusively): refusing a second holder, or waiting for it.
flock belongs to an open file, so two opens in one process contend like two processes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from metatokens.errors import RunDirError
from metatokens.fileio import lock_exclusively, unlock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    lock = tmp_path / ".lock"
    fd = lock_exclusively(lock, lambda who: RunDirError(f"in use{who}"))
    try:
        with pytest.raises(RunDirError, match=rf"in use \(pid {os.getpid()}\)"):
            lock_exclusively(lock, lambda who: RunDirError(f"in use{who}"))
    finally:
        unlock(fd, lock)
    assert not lock.exists()  # the holder removes its lock file


def test_waiting_mode_takes_the_lock_once_the_holder_lets_go(tmp_path):
    """The token cache's builders wait for each other instead of being refused."""
    lock = tmp_path / ".lock"
    first = lock_exclusively(lock, None)
    got: list[float] = []

    def second() -> None:
        fd = lock_exclusively(lock, None)
        got.append(time.monotonic())
        os.close(fd)

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.3)
    assert got == [] and waiter.is_alive()  # still waiting while the first holds it
    released = time.monotonic()
    os.close(first)
    waiter.join(timeout=10)
    assert len(got) == 1 and got[0] >= released
