"""The `flare-ray` console script (flare_ray.cli.main) and the Makefile's `setup`/`quickstart`/`test` targets."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flare_ray.cli import main as cli_main
from flare_ray.cli import tune as cli_tune

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
COMMANDS = ["tune", "stage1", "translate", "report", "predict"]


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
    assert f"usage: python -m flare_ray.{name}" in capsys.readouterr().out


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
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["flare-ray"] == "flare_ray.cli.main:run"  # main(), then exit_promptly


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
    "GNUMAKEFLAGS",
)


def _make(*args: str, cwd: Path = ROOT, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.fail(
            "GNU make is not installed: the README's `make setup` / `make test` need it "
            "(.ci/run installs it with apt-get install -y make)"
        )
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}  # not the caller's `make test` flags
    env.update(extra_env or {})
    run = subprocess.run(
        [make, "-f", str(ROOT / "Makefile"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"make {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run


def test_make_quickstart_runs_the_quickstart_sweep():
    out = _make("-n", "quickstart").stdout
    assert ".venv/bin/flare-ray tune search_spaces/quickstart.yaml" in out
    assert "--dry-run" in _make("-n", "quickstart", "ARGS=--dry-run").stdout


def test_make_test_runs_pytest():
    out = _make("-n", "test").stdout
    assert ".venv/bin/python -m pytest" in out
    assert "-m pytest -x -q tests/x.py" in _make("-n", "test", "PYTEST_ARGS=-x -q tests/x.py").stdout


def test_make_help_is_the_default_target():
    out = _make().stdout
    for target in ("setup", "quickstart", "test", "dry-run", "clean"):
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


def test_a_worker_bigger_than_this_machine_is_an_error_before_any_trial(capsys, tmp_path):
    import ray

    small = ROOT / "tests" / "configs" / "small-flare-search.yaml"
    code = cli_main.main(
        ["tune", str(small), "--set", "scaling.cpus_per_worker=64", "--set", f"storage_path={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "a trial's worker asks for 64 CPU, 0 GPU" in err and "no trial could ever start" in err, err
    assert not ray.is_initialized()
