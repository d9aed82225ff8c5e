""":func:`flare_ray.logs.native_output_to_log`: what native code writes to stderr (Ray's core worker's notices
while ``predict`` translates on Ray Data) goes to the command's log file, not to the console; with
``--verbose`` it stays on the console."""

from __future__ import annotations

import os

import pytest

from flare_ray.logs import log_to_file, native_output_to_log, stop_logging_to_file


@pytest.mark.parametrize("verbose", [False, True])
def test_native_stderr_goes_to_the_log_file_unless_verbose(tmp_path, capfd, verbose):
    log = log_to_file(tmp_path / "predict.log", verbose=verbose)
    try:
        with native_output_to_log():
            os.write(2, b"[E core_worker.cc:2465] a native notice\n")
        os.write(2, b"after: the console again\n")
    finally:
        stop_logging_to_file()
    err = capfd.readouterr().err
    assert "after: the console again" in err
    assert ("a native notice" in err) == verbose
    assert ("a native notice" in log.read_text()) == (not verbose)
