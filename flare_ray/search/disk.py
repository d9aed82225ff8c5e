"""A full disk under the sweep's storage folder stops the sweep cleanly (issue 28, item 7b).

Left alone, a full disk shows up everywhere at once: each trial fails with ``OSError: [Errno 28]`` (its cache,
checkpoints, result files), Tune and MLflow's sqlite store ("database or disk is full") log one traceback
each, the log file's handler another per record, and the parent run stays RUNNING because the store can no
longer be written. :class:`DiskGuard`, in the driver, holds a reserve of space in the storage folder (a file,
:data:`RESERVE_NAME`), and watches the free space of the folder's filesystem and every record the
driver logs; when the free space runs out, or anything reports the disk full, it stops the sweep as Ctrl-C does
(each search saves its state where it still can; ``--resume`` continues) and, once the sweep and its trials have
stopped, gives the reserve back so that the runs' FAILED status can still be written. The command then prints one line (:meth:`DiskGuard.line`).

``FLARE_RAY_FAKE_DISK_SIZE`` (bytes; tests only) makes the guard see a disk of that size holding only the
storage folder, where no small filesystem can be mounted.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from flare_ray.storage import is_disk_full

from .concurrent import request_stop

MAX_RESERVE = 8 * 2**20  # enough for the tracking store to record the runs FAILED (a few pages of sqlite)
RESERVE_NAME = ".flare_ray-space-reserve"  # in the storage folder while a sweep runs; removed when it ends
FAKE_SIZE_ENV = "FLARE_RAY_FAKE_DISK_SIZE"


def size(value: int) -> str:
    """Bytes in words: ``812 KiB``, ``1.5 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{value} bytes"


class DiskGuard(logging.Handler):
    """Watches the filesystem of the local storage ``folder`` from a thread of the driver (every ``interval``
    seconds), and the driver's log records (a trial's error relayed by Tune, MLflow's store errors); trips once
    the space left beside its reserve (a tenth of the filesystem, at most :data:`MAX_RESERVE`) is below a
    quarter of the reserve, or a record says the disk is full. Tripping stops the searches as Ctrl-C does
    (:func:`~flare_ray.search.concurrent.request_stop`: each saves its state), quietly; the reserve is held until :meth:`give_back_reserve`."""

    def __init__(self, folder: Path, interval: float = 0.25) -> None:
        super().__init__(level=logging.WARNING)
        self.folder, self.interval = folder, interval
        self.reserve = min(MAX_RESERVE, self._usage()[0] // 10)
        self.free_when_full: int | None = None
        self.tripped = threading.Event()
        self._reported = threading.Event()  # a log record said the disk is full
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="disk-guard")

    def __enter__(self) -> DiskGuard:
        self._hold_reserve()
        logging.getLogger().addHandler(self)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        logging.getLogger().removeHandler(self)
        if (
            not self.tripped.is_set()
        ):  # else kept for the runs' FAILED status: :meth:`give_back_reserve`, once Ray stopped
            self.give_back_reserve()

    def _hold_reserve(self) -> None:
        """Write the reserve file (random bytes: a compressing filesystem stores them in full); as much of it as
        fits where the disk is nearly full already."""
        chunk = os.urandom(min(self.reserve, 2**20))
        with open(self.folder / RESERVE_NAME, "wb") as file:
            written = 0
            try:
                while written < self.reserve:
                    written += file.write(chunk[: self.reserve - written])
                    file.flush()
            except OSError as err:
                if not is_disk_full(err):
                    raise

    def give_back_reserve(self) -> None:
        """Give the reserve back (the sweep is over, or stopped and its trials with it)."""
        (self.folder / RESERVE_NAME).unlink(missing_ok=True)

    def free(self) -> int:
        return self._usage()[1]

    def _usage(self) -> tuple[int, int]:
        """(size, free bytes) of the folder's filesystem, or of the fake disk of :data:`FAKE_SIZE_ENV`."""
        fake = os.environ.get(FAKE_SIZE_ENV)
        if fake:
            used = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
            return int(fake), max(0, int(fake) - used)
        usage = shutil.disk_usage(self.folder)
        return usage.total, usage.free

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._reported.is_set() or self.free() < self.reserve // 4:
                    self.trip()
            except OSError:  # a file removed while it was counted, the folder unmounted: look again
                continue

    def emit(self, record: logging.LogRecord) -> None:
        """A record of the driver that says the disk is full (its message or its exception) trips the guard, from
        its own thread (a handler that logged or stopped the sweep itself could deadlock with the logging of
        other threads)."""
        if is_disk_full(record.getMessage()) or (record.exc_info and is_disk_full(record.exc_info[1])):
            self._reported.set()

    def trip(self) -> None:
        """Stop the sweep (called by the watching thread alone); ``tripped`` once it is asked to stop."""
        if self.tripped.is_set():
            return
        self.free_when_full = self.free()
        logging.getLogger(__name__).info(  # the log file only: the command prints the one line
            "%s: %s free: stopping the sweep (its %s reserve is kept for the runs' status)",
            self.folder,
            size(self.free_when_full),
            size(self.reserve),
        )
        request_stop()
        self.tripped.set()

    def line(self) -> str:
        """The one line the command prints when the guard stopped the sweep."""
        return (
            f"error: no space left on {self.folder} ({size(self.free_when_full or 0)} free): the sweep stopped; "
            "the runs are marked FAILED; free space and run the same command with --resume"
        )
