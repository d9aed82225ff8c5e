"""The `flare-ray` console script (flare_ray.cli.main) and the Makefile's `setup`/`quickstart`/`test` targets."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from flare_ray.cli import main as cli_main
from flare_ray.cli import tune as cli_tune
from tests.helpers import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
COMMANDS = ["tune", "stage1", "translate", "report", "predict", "reproduce"]


# --- flare-ray -------------------------------------------------------------------------------------------


def test_tune_dry_run_is_python_m_flare_ray_tune(capsys):
    assert cli_main.main(["tune", str(QUICKSTART), "--dry-run"]) == 0
    via_front_end = capsys.readouterr()
    assert cli_tune.main([str(QUICKSTART), "--dry-run"]) == 0
    direct = capsys.readouterr()
    assert via_front_end.out == direct.out
    assert "quickstart" in via_front_end.out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: flare-ray" in out
    for name in COMMANDS:
        assert f"\n    {name}" in out, name


def test_no_arguments_prints_the_help_and_exits_2(capsys):
    assert cli_main.main([]) == 2
    err = capsys.readouterr().err
    for name in COMMANDS:
        assert name in err


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["tuen", "search_spaces/quickstart.yaml"])
    assert exit_.value.code not in (0, None)
    assert "invalid choice: 'tuen'" in capsys.readouterr().err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"flare-ray {version('flare_ray')}"


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_gets_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main.main([name, "--help"])
    assert exit_.value.code == 0
    assert f"usage: flare-ray {name}" in capsys.readouterr().out


def test_tune_errors_keep_their_exit_status(tmp_path, capsys):
    assert cli_main.main(["tune", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert "error:" in capsys.readouterr().err


def test_front_end_help_imports_no_command():
    code = textwrap.dedent("""
        import sys
        from flare_ray.cli.main import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = [m for m in ("torch", "ray", "flare_ray.cli.tune", "flare_ray.cli.translate") if m in sys.modules]
        print("IMPORTED", heavy, file=sys.stderr)
        sys.exit(1 if heavy else 0)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr


def console_script() -> Path:
    """The ``flare-ray`` that installing the project wrote into this environment's scripts folder."""
    script = Path(sysconfig.get_path("scripts")) / "flare-ray"
    assert script.is_file(), f"{script} is missing: the project is not installed here (make setup, pip install -e .)"
    return script


def test_the_installed_console_script_is_the_front_end(capsys):
    script = str(console_script())
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: flare-ray"), shown.stdout + shown.stderr
    for name in COMMANDS:
        assert f"\n    {name}" in shown.stdout, name

    dry = subprocess.run([script, "tune", str(QUICKSTART), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert cli_tune.main([str(QUICKSTART), "--dry-run"]) == 0
    assert dry.stdout == capsys.readouterr().out  # the dry run of python -m flare_ray.tune, in this directory

    missing = subprocess.run([script, "tune", "missing.yaml", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: missing.yaml"), missing.stderr  # its status


# --- Makefile ----------------------------------------------------------------------------------------------

MAKE_VARIABLES = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEFILES",
    "VENV",
    "PYTHON",
    "TORCH_SPEC",
    "ARGS",
    "PYTEST_ARGS",
    "NAME",
    "PORT",
    "STORE",
    "GNUMAKEFLAGS",
)


def _make(*args: str, cwd: Path = REPO, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.fail(
            "GNU make is not installed: the README's `make setup` / `make test` need it "
            "(.ci/run installs it with apt-get install -y make)"
        )
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}  # not the caller's `make test` flags
    env.update(extra_env or {})
    run = subprocess.run(
        [make, "-f", str(REPO / "Makefile"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"make {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run


@pytest.fixture
def installed(tmp_path) -> Path:
    """A VENV for the Makefile that is this environment, installed: its ``python`` and ``flare-ray`` run this
    environment's, and its install stamp is newer than pyproject.toml, so `make setup` (the first step of
    `make quickstart` and `make test`) calls no pip."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, target in (("python", sys.executable), ("flare-ray", console_script())):
        wrapper = venv / "bin" / name
        wrapper.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        wrapper.chmod(0o755)
    (venv / ".flare_ray-installed").touch()
    return venv


def test_make_quickstart_runs_the_quickstart_sweep(installed):
    out = _make("quickstart", "ARGS=--dry-run", f"VENV={installed}").stdout
    assert "installing" not in out  # the stamp is current: no pip
    dry = subprocess.run(
        [str(console_script()), "tune", "search_spaces/quickstart.yaml", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0 and "# experiment quickstart (from search_spaces/quickstart.yaml)" in dry.stdout
    assert dry.stdout in out  # the quickstart's dry run, with ARGS


def test_make_test_runs_pytest_with_its_arguments(installed):
    out = _make("test", "PYTEST_ARGS=-q -rA tests/unit/test_layers.py", f"VENV={installed}").stdout
    assert "installing" not in out
    passed = re.findall(r"^PASSED (\S+)::", out, re.M)  # -rA: a line per test
    assert passed and set(passed) == {"tests/unit/test_layers.py"}, out
    assert re.search(rf"^{len(passed)} passed in ", out, re.M), out


def test_make_mlflow_and_make_report_run_the_venvs_commands(installed, tmp_path):
    """`make mlflow` is the virtual environment's `mlflow ui` with flare-ray's app (flare_ray.tracking.ui) on the
    sweeps' store, on loopback (PORT and STORE from the command line, not from the shell's environment); `make
    report NAME=...` its `flare-ray report`."""
    store = tmp_path / "mlflow.db"
    store.touch()
    out = _make("-n", "mlflow", "PORT=5001", f"STORE={store}", f"VENV={installed}", extra_env={"PORT": "8080"}).stdout
    ui = f"{installed}/bin/mlflow ui --backend-store-uri sqlite:///{store}"
    assert f"{ui} --host 127.0.0.1 --port 5001 --app-name flare-ray" in out
    out = _make("-n", "mlflow", f"VENV={installed}", extra_env={"PORT": "8080"}).stdout
    assert "--backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1 --port 5000 --app-name flare-ray" in out
    out = _make("-n", "report", "NAME=rank", f"STORE={store}", "ARGS=--seed 1", f"VENV={installed}").stdout
    assert f"{installed}/bin/flare-ray report rank --tracking-uri sqlite:///{store} --seed 1" in out


def test_make_help_is_the_default_target():
    out = _make().stdout
    for target in ("setup", "quickstart", "mlflow", "report", "test", "lint", "format", "dry-run", "docs", "clean"):
        assert f"\n  {target} " in out, target


FAKE_PYTHON = """\
#!/usr/bin/env bash
# Stands in for python3 and for the venv's python: logs each call; `-m venv DIR` makes DIR/bin/python.
echo "$*" >> "$FAKE_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi
"""


@pytest.fixture
def project(tmp_path):
    """A scratch project for `make setup`: a pyproject.toml, a fake python3 that logs what it is asked."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    os.utime(tmp_path / "pyproject.toml", (1_000_000_000, 1_000_000_000))  # clearly older than any stamp
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.touch()

    def setup(*variables: str) -> tuple[str, list[str]]:
        before = len(log.read_text().splitlines())
        run = _make("setup", f"PYTHON={fake}", *variables, cwd=tmp_path, extra_env={"FAKE_LOG": str(log)})
        return run.stdout, log.read_text().splitlines()[before:]

    return tmp_path, setup


def test_make_setup_creates_installs_then_reuses(project):
    folder, setup = project
    out, calls = setup()
    assert calls == [
        "-m venv .venv",
        "-m pip install --quiet --upgrade pip",
        "-m pip install --quiet torch==2.13.0",
        "-m pip install --quiet -e .[test]",
    ]
    assert out.splitlines() == [
        "creating .venv",
        "installing torch==2.13.0 (CPU build)",
        "installing flare_ray and its test tools",
    ]
    assert (folder / ".venv" / ".flare_ray-installed").exists()

    out, calls = setup()  # the stamp is newer than pyproject.toml: no pip at all
    assert calls == []
    assert "installing" not in out

    (folder / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")  # newer than the stamp
    out, calls = setup()
    assert calls == ["-m pip install --quiet torch==2.13.0", "-m pip install --quiet -e .[test]"]  # venv reused


def test_make_setup_torch_spec(project):
    folder, setup = project
    _, calls = setup("TORCH_SPEC=skip")
    assert calls == ["-m venv .venv", "-m pip install --quiet --upgrade pip", "-m pip install --quiet -e .[test]"]
    assert setup("TORCH_SPEC=")[1] == []  # skipping torch never forces a reinstall

    cuda = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    out, calls = setup(f"TORCH_SPEC={cuda}")  # an explicit torch build is installed even with a current stamp
    assert calls == [f"-m pip install --quiet {cuda}", "-m pip install --quiet -e .[test]"]
    assert f"installing {cuda}\n" in out  # not called the CPU build


def test_an_unreachable_tracking_server_is_an_error_before_ray_starts(capsys, fault_summary):
    import socket
    import time

    import ray

    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    code = cli_main.main(["tune", str(QUICKSTART), "--set", f"tracking.tracking_uri=http://127.0.0.1:{port}"])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and took < 10, (code, took, err)
    assert f"the MLflow tracking server http://127.0.0.1:{port} does not answer" in err and "mlflow server" in err
    assert not ray.is_initialized()
    fault_summary(
        "MLflow unreachable",
        failures_injected=1,
        trials_completed=0,
        mlflow_runs=0,
        duplicates=0,
        exit_status=f"2 after {took:.1f} s, before Ray started",
    )
