"""The full-disk guard of a sweep (flare_ray.search.disk) is a logging handler in the driver: handling a record
must leave its lock free (a handler that keeps it blocks every other thread's warning, and the interpreter's
exit in logging.shutdown), and a record saying the disk is full trips it from its own thread."""

from __future__ import annotations

import logging
import threading

from flare_ray.search import disk
from flare_ray.search.disk import DiskGuard


def test_a_record_handled_leaves_the_guards_lock_free_and_a_full_disk_trips_it(tmp_path, monkeypatch):
    stops = []
    monkeypatch.setattr(disk, "request_stop", lambda: stops.append(1))
    guard = DiskGuard(tmp_path, interval=0.01)
    logger = logging.getLogger("flare_ray.test_disk_guard")
    with guard:
        logger.warning("a trial failed: OSError: [Errno 28] No space left on device")
        other = threading.Thread(target=logger.warning, args=("another thread's warning",))
        other.start()
        other.join(5)
        assert not other.is_alive(), "the guard kept its handler lock: another thread's warning blocks"
        assert guard.tripped.wait(5) and stops == [1]
    free = threading.Thread(target=lambda: guard.acquire() or guard.lock.release())
    free.start()
    free.join(5)
    assert not free.is_alive(), "logging.shutdown would wait for the guard's lock forever"
    guard.give_back_reserve()
    assert not (tmp_path / disk.RESERVE_NAME).exists()
