"""The `flare-ray` commands' help agrees with itself: every command of flare_ray.cli.main.COMMANDS shows
`flare-ray <command>` in its usage line and has an `examples:` section whose commands its own parser
accepts; `--verbose` and `--dry-run` are one flag each with one meaning everywhere, and the old spellings
(`translate --check`, `--log-level`) are gone."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

import pytest

from flare_ray.cli.main import COMMANDS
from flare_ray.cli.main import main as front_end

VERBOSE_MEANING = "also show every library's output on the console"
# Flags that once meant what --verbose / --dry-run mean, or that would say it a second way.
OTHER_SPELLINGS = {"--check", "--log-level", "--quiet", "-q", "-v", "--debug", "--validate", "--plan"}
HAS_VERBOSE = {"tune", "stage1", "translate", "predict", "reproduce"}  # their libraries' output is kept off the console
HAS_DRY_RUN = {
    "tune",
    "translate",
    "predict",
    "reproduce",
}  # the commands that check their inputs and plan before doing it


def parser_of(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(COMMANDS[name][0])
    build = getattr(module, "parser", None) or module.build_parser
    return build()


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def help_of(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        front_end([name, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def examples(text: str) -> list[str]:
    """The command lines of a help's `examples:` section (continuation lines joined), up to its end."""
    section = text.split("\nexamples:\n", 1)[1]
    lines: list[str] = []
    for line in section.splitlines():
        if not line.strip():
            break
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + line.strip()
        else:
            lines.append(line.strip())
    return [line.split("   #")[0].strip() for line in lines]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_usage_line_names_the_flare_ray_command(name, capsys):
    assert help_of(name, capsys).startswith(f"usage: flare-ray {name} ")
    assert parser_of(name).prog == f"flare-ray {name}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_shows_examples_that_its_parser_accepts(name, capsys):
    text = help_of(name, capsys)
    assert "\nexamples:\n" in text, f"flare-ray {name} --help has no 'examples:' section"
    found = examples(text)
    ours = []
    for line in found:
        match = re.search(rf"(?:flare-ray {name}|python -m flare_ray\.{name})( .*)?$", line)
        if match:
            ours.append(shlex.split(match.group(1) or ""))
    assert ours, f"no example of flare-ray {name} in {found}"
    for argv in ours:
        parser_of(name).parse_args(argv)  # argparse exits (status 2) on anything it does not accept


@pytest.mark.parametrize("name", list(COMMANDS))
def test_verbose_and_dry_run_mean_one_thing_and_have_no_other_spelling(name):
    flags = options(parser_of(name))
    assert not OTHER_SPELLINGS & set(flags), f"flare-ray {name}: {sorted(OTHER_SPELLINGS & set(flags))}"
    if name in HAS_VERBOSE:
        assert "--verbose" in flags, f"flare-ray {name} has no --verbose"
    if name in HAS_DRY_RUN:
        assert "--dry-run" in flags, f"flare-ray {name} has no --dry-run"
    if "--verbose" in flags:
        verbose = flags["--verbose"]
        assert isinstance(verbose, argparse._StoreTrueAction) and verbose.option_strings == ["--verbose"]
        assert verbose.help.startswith(VERBOSE_MEANING), verbose.help
    if "--dry-run" in flags:
        dry_run = flags["--dry-run"]
        assert isinstance(dry_run, argparse._StoreTrueAction) and dry_run.option_strings == ["--dry-run"]
        assert dry_run.dest == "dry_run"


def test_translate_check_is_gone_and_dry_run_checks_without_translating(tmp_path, capsys):
    """The translation command's dry run is what `--check` was: the config and the data are checked, nothing
    is translated; `--check` and `--log-level` are refused as unknown options."""
    import yaml

    from flare_ray.cli.translate import main

    config = tmp_path / "translate.yaml"
    config.write_text(yaml.safe_dump({"task": {"name": "nusax", "language": "jav"}, "mt_dir": str(tmp_path / "mt")}))
    assert main([str(config), "--dry-run"]) == []  # nothing made
    assert not (tmp_path / "mt").exists()
    for old in (["--check"], ["--log-level", "DEBUG"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(config), *old])
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {old[0]}" in capsys.readouterr().err
