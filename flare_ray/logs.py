"""Where output goes: the console is for people, log files keep everything.

* :func:`log_to_file` (the command's process): every log record at INFO and above goes to a log file;
  the console gets flare_ray's own warnings and every library's errors, or with ``verbose`` everything
  as the libraries print it.
* :func:`tee_output` (a trial's worker process): everything the process writes to its stdout and
  stderr, Python or native code, is also written to the trial's log file, which outlives the trial.

Standard library (and the light :mod:`flare_ray.storage`) only: the trial's workers call it before anything heavy
is imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from flare_ray.storage import is_disk_full

LIBRARIES = (
    "ray",
    "ray.data",
    "mlflow",
    "optuna",
    "alembic",
    "urllib3",
    "filelock",
    "datasets",
    "transformers",
    "peft",
    "bitsandbytes",
    "torch",
    "py.warnings",
)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OursOrErrors(logging.Filter):
    """The console handler: flare_ray's warnings, anyone's errors (but a full disk's: see :class:`_NotDiskFull`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.startswith("flare_ray") and record.levelno >= logging.WARNING
        return (ours or record.levelno >= logging.ERROR) and _NOT_DISK_FULL.filter(record)


class _NotDiskFull(logging.Filter):
    """Keeps a full disk's errors off the console: once the disk is full every trial, Tune's state saves and
    MLflow's store each log a traceback of it, and the command says it in one line instead (the sweep's
    :class:`~flare_ray.search.disk.DiskGuard`). They still go to the log file where it can be written."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (is_disk_full(record.getMessage()) or (record.exc_info and is_disk_full(record.exc_info[1])))


_NOT_DISK_FULL = _NotDiskFull()


class _LogFile(logging.FileHandler):
    """The log file's handler: a record it cannot write because the disk is full is lost quietly (Python would
    print a traceback for each), counted in ``lost``."""

    lost = 0

    def handleError(self, record: logging.LogRecord) -> None:
        if is_disk_full(sys.exc_info()[1]):
            self.lost += 1
            return
        super().handleError(record)


def log_to_file(path: Path, verbose: bool = False) -> Path:
    """Send this process's logging to ``path`` (INFO and above) and keep the console for people."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = _LogFile(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    to_file.setLevel(logging.INFO)
    root = logging.getLogger()
    _UNDO.append(lambda level=root.level: root.setLevel(level))
    root.setLevel(logging.INFO)
    _add(root, to_file)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if not verbose else _FORMAT))
        if not verbose:
            console.addFilter(_OursOrErrors())
        _add(root, console)
    logging.captureWarnings(True)  # warnings.warn(...) of the libraries: to the file
    _UNDO.append(lambda: logging.captureWarnings(False))
    # A logger with no handler and propagation off (Ray's, while ray.init sets itself up) falls back to
    # Python's last resort, the console: the file instead.
    _UNDO.append(lambda last=logging.lastResort: setattr(logging, "lastResort", last))
    logging.lastResort = to_file
    _FILE[0], _VERBOSE[0] = to_file, verbose
    quiet_libraries()
    return path


_FILE: list[logging.Handler | None] = [None]
_VERBOSE = [False]


def quiet_libraries() -> None:
    """Libraries that install console handlers of their own when imported (Ray, MLflow, Optuna) log to the
    file of :func:`log_to_file` too, and to the console only their errors. Call again after importing one."""
    to_file = _FILE[0]
    if to_file is None:
        return
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        if not logger.propagate and to_file not in logger.handlers:  # (with no handler of its own, Python's
            _add(logger, to_file)  # last resort would print its warnings)
        # Its own console handlers print errors only, whether it propagates or not (transformers' propagates
        # where $CI is set, and keeps its handler)
        for handler in logger.handlers:
            if handler is not to_file and not _VERBOSE[0] and handler.level < logging.ERROR:
                _UNDO.append(lambda handler=handler, level=handler.level: handler.setLevel(level))
                handler.setLevel(logging.ERROR)
            if handler is not to_file and not _VERBOSE[0] and _NOT_DISK_FULL not in handler.filters:
                handler.addFilter(_NOT_DISK_FULL)
                _UNDO.append(lambda handler=handler: handler.removeFilter(_NOT_DISK_FULL))
        # torch keeps its loggers' levels itself (TORCH_LOGS) and adds a console handler of its own when a part
        # of it (inductor) is first imported, which would then print every INFO record: its level stays.
        if name != "torch" and (logger.level == logging.NOTSET or logger.level > logging.INFO):
            _UNDO.append(lambda logger=logger, level=logger.level: logger.setLevel(level))
            logger.setLevel(logging.INFO)


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
    """Within: what this process writes to file descriptor 2 (native code's messages, such as Ray's core worker's
    error-level notices, which no logger sees) goes to the log file of :func:`log_to_file` instead of the console.
    Nothing changes with ``verbose`` or without a log file."""
    to_file = _FILE[0]
    if to_file is None or _VERBOSE[0] or not isinstance(to_file, logging.FileHandler) or to_file.stream is None:
        yield
        return
    sys.stderr.flush()
    to_file.flush()
    console = os.dup(2)
    os.dup2(to_file.stream.fileno(), 2)  # opened for appending: the handler's records and these interleave
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)


def stop_logging_to_file() -> None:
    """Undo :func:`log_to_file` (the command is over: e.g. called in-process, by a test or a notebook)."""
    while _UNDO:
        _UNDO.pop()()
    if _FILE[0] is not None:
        try:
            _FILE[0].close()
        except OSError as err:  # its last records could not be flushed: the disk is full (the command said so)
            if not is_disk_full(err):
                raise
    _FILE[0] = None


_UNDO: list = []


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _UNDO.append(lambda: logger.removeHandler(handler))


def timestamped(folder: Path, name: str) -> Path:
    """``folder/name-YYYYmmdd-HHMMSS.log``."""
    return folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def tee_output(path: str | Path) -> None:
    """From now on, everything this process writes to file descriptors 1 and 2 also goes to ``path``
    (appended, after a line naming the process): Python's prints and logs, native libraries' messages
    and a traceback at a crash. Called again (a process that runs one trial after another), it switches
    to the new file.

    The process's original stdout and stderr (in a Ray worker: its files under Ray's session logs, which
    Ray streams to the driver when asked to) still get everything."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab", buffering=0)  # noqa: SIM115 - open for the life of the process (or the next switch)
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n".encode())
    with _LOCK:
        previous, _TEE[0] = _TEE[0], log
    if previous is not None:
        previous.close()
        return
    for fd in (1, 2):
        original = os.dup(fd)
        read, write = os.pipe()
        (sys.stdout if fd == 1 else sys.stderr).flush()
        os.dup2(write, fd)
        os.close(write)
        threading.Thread(target=_copy, args=(read, original), daemon=True, name=f"tee-{fd}").start()


_LOCK = threading.Lock()
_TEE: list = [None]  # the log file the tee writes to


def _copy(read: int, original: int) -> None:
    while True:
        try:
            chunk = os.read(read, 65536)
        except OSError:
            return
        if not chunk:
            return
        with _LOCK:
            for write in (lambda: os.write(original, chunk), lambda: _TEE[0].write(chunk)):
                try:
                    write()
                except (OSError, ValueError):  # ValueError: a closed file
                    pass
