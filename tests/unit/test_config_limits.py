"""The limits on what is read as a config (issue 28, item 4): a few KB of nested aliases ("billion laughs"), an
alias inside its own anchor, 5,000 levels of nesting, a file over the size limit, bytes that are not UTF-8 (and a
control character, which YAML does not allow) are each one error naming the file (and line) and the limit, with
exit status 2 and no traceback, quickly and before any heavy package is imported: in the experiment YAML, in a
``--set`` value and in the translation config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from flare_ray.cli.translate import main as translate
from flare_ray.cli.tune import main as tune
from flare_ray.configfile import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_yaml

HEAVY = ("torch", "transformers", "peft", "ray", "mlflow", "datasets")
BIG = 70 * 2**20  # the size of the YAML that did not finish in 120 s


def laughs(levels: int = 9, width: int = 10) -> list[str]:
    """A billion laughs: each list holds ``width`` aliases of the one before (``width ** levels`` strings)."""
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return items


FILES = {  # case -> (the file's bytes, what the error says after the file's name)
    "billion_laughs": (
        "".join(f"l{i}: {item}\n" for i, item in enumerate(laughs())).encode(),
        rf", line \d+, column \d+: the YAML holds more than the limit of {MAX_NODES:,} nodes \(an alias counted",
    ),
    "recursive_alias": (b"name: t\nloop: &a [*a]\n", r", line 2, column 11: the YAML uses the alias \*a inside its"),
    "deep_nesting": (
        b"name: t\nx: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        rf", line 2, column \d+: the YAML nests deeper than the limit of {MAX_DEPTH} levels",
    ),
    "not_utf8": (b"name: t\n# caf\xe9\n", r", line 2, column 6: not UTF-8 text \(byte 0xe9\)"),
    "control_character": (
        b"name: t\n# nul\0\n",
        r", line 2, column 6: YAML does not allow the control character #x0000",
    ),
    "too_big": (None, rf": {BIG:,} bytes, over the limit of {MAX_BYTES:,} for a config file"),
}
VALUES = {  # case -> (a --set value, what the error says of it)
    "billion_laughs": (f"[{', '.join(laughs())}]", rf"the value holds more than the limit of {MAX_NODES:,} nodes"),
    "recursive_alias": ("&a [*a]", r"the value uses the alias \*a inside its own anchor &a \(a recursive structure\)"),
    "deep_nesting": ("[" * 5000 + "]" * 5000, rf"the value nests deeper than the limit of {MAX_DEPTH} levels"),
    "control_character": ("x\ay", r"the value is not valid YAML: line 1, column 2: YAML does not allow the control"),
    "too_long": ("x" * (MAX_BYTES + 1), rf"the value is {MAX_BYTES + 1:,} characters, over the limit of {MAX_BYTES:,}"),
}


def write_case(folder: Path, case: str) -> Path:
    path = folder / f"{case}.yaml"
    text = FILES[case][0]
    if text is None:  # sparse: no disk used, and nothing read before the refusal
        with open(path, "wb") as file:
            file.truncate(BIG)
    else:
        path.write_bytes(text)
    return path


@contextmanager
def deadline(seconds: float):
    """Fail (rather than hang, or fill the memory) when the block takes longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_error(err: str, path: Path, expected: str) -> None:
    assert err.startswith(f"error: {path}") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(re.escape(str(path)) + expected, err), err


@pytest.mark.parametrize("case", FILES)
def test_experiment_yaml_over_a_limit_is_one_error(case, tmp_path, capsys):
    path = write_case(tmp_path, case)
    with deadline(3):
        assert tune([str(path), "--dry-run"]) == 2
    one_error(capsys.readouterr().err, path, FILES[case][1])


@pytest.mark.parametrize("case", FILES)
def test_translation_config_over_a_limit_is_one_error(case, tmp_path, capsys):
    path = write_case(tmp_path, case)
    with deadline(3), pytest.raises(SystemExit) as exit_:
        translate([str(path)])
    assert exit_.value.code == 2
    one_error(capsys.readouterr().err, path, FILES[case][1])


@pytest.mark.parametrize("case", VALUES)
def test_set_value_over_a_limit_is_one_error(case, tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\n")
    value, expected = VALUES[case]
    with deadline(3):
        assert tune([str(path), "--set", f"training.epochs={value}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    head, problem = err.splitlines()  # "<file>: invalid experiment config (1 problem)", then the problem
    assert str(path) in head and "(from --set training.epochs=" in problem and len(problem) < 400, err
    assert re.search(f"bad override: {expected}", problem), err


def test_no_more_than_the_limit_is_read_from_a_stream(tmp_path, capsys):
    """A config that has no size to look at first (a pipe) is refused after MAX_BYTES + 1 bytes: the rest of
    what the writer offers (64 times that) is never read."""
    fifo = tmp_path / "stream.yaml"
    os.mkfifo(fifo)
    written: list[int] = []

    def write() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # waits for the reader
        try:
            while sum(written) < 64 * MAX_BYTES:
                written.append(os.write(fd, b"\0" * 2**16))
        except BrokenPipeError:  # the reader has stopped
            pass
        finally:
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with deadline(3):
            assert tune([str(fifo), "--dry-run"]) == 2
    finally:
        if writer.is_alive():  # let a writer still waiting for a reader open and stop
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(3)
    one_error(capsys.readouterr().err, fifo, rf": over the limit of {MAX_BYTES:,} bytes for a config file")
    assert sum(written) < 2 * MAX_BYTES


def test_refused_before_any_heavy_import(tmp_path):
    path = write_case(tmp_path, "recursive_alias")
    code = textwrap.dedent("""\
        import sys
        from flare_ray.cli import translate, tune
        assert tune.main([sys.argv[1], "--dry-run"]) == 2
        try:
            translate.main([sys.argv[1]])
        except SystemExit as exit_:
            assert exit_.code == 2
        print("loaded:", sorted(m for m in sys.argv[2:] if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(path), *HEAVY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout + done.stderr


def test_aliases_within_the_limits_load_and_are_indexed_once():
    """An alias is indexed at its anchor only: a key under it has the anchor's line, and a path under the alias
    falls back to the alias's own line (ConfigFileError looks up the nearest section)."""
    data, lines, duplicates = parse_yaml("base: &b {lr: 1, lr: 2}\ncopy: *b\n", "t.yaml")
    assert data == {"base": {"lr": 2}, "copy": {"lr": 2}}
    assert lines[("base", "lr")] == 1 and lines[("copy",)] == 2 and ("copy", "lr") not in lines
    assert duplicates == [(("base", "lr"), 1)]  # once, at the anchor


def test_a_merge_key_and_the_keys_it_overrides_are_no_duplicates():
    """``<<: *base`` then a key of base's: YAML's merge, the later key winning; a real duplicate still counts."""
    text = "base: &b {lr: 1, r: 8}\ntraining:\n  <<: *b\n  lr: 2\nother: {a: 1, a: 2}\n"
    data, lines, duplicates = parse_yaml(text, "t.yaml")
    assert data["training"] == {"lr": 2, "r": 8}
    assert lines[("training", "lr")] == 4
    assert duplicates == [(("other", "a"), 5)]
