"""``flare-ray tune`` refuses a sweep no trial of which could ever start on this machine, once Ray is up (it
asks Ray what the machine holds), before any trial. (The console script without Ray: ``unit/test_entry_points.py``.)
"""

from __future__ import annotations

import pytest

from flare_ray.cli import main as cli_main
from tests.helpers import QUICKSTART

pytestmark = pytest.mark.ray


def test_a_worker_bigger_than_this_machine_is_an_error_before_any_trial(capsys, tmp_path):
    import ray

    code = cli_main.main(
        ["tune", str(QUICKSTART), "--set", "scaling.cpus_per_worker=64", "--set", f"storage_path={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "a trial's worker asks for 64 CPU, 0 GPU" in err and "no trial could ever start" in err, err
    assert not ray.is_initialized()
