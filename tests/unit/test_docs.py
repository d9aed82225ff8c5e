"""The README and docs/ say what works: every command line in their `bash`/`console`/`sh` blocks parses as
typed from the repository's root after `make quickstart` (a `flare-ray` command by its own parser, and its
`--dry-run` where it has one and the line needs nothing remote or made earlier; a `make` target and its
variables against the Makefile; `mlflow` and `ray` by their own click command lines), every relative link
and anchor resolves, the README stays a README, and docs/config-reference.md is what the schema writes."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from flare_ray.cli.main import COMMANDS
from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_FENCES = {"bash", "console", "sh", "shell"}
VENV = ".venv/bin/"
# Programs a line may call that the test does not run: the set-up commands `make setup` itself runs.
SETUP = {("python3", "-m", "venv"), (f"{VENV}python", "-m", "pip")}
MAKEFILE = (REPO / "Makefile").read_text()


def blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """The fenced code blocks of a Markdown page: (language, first line number, lines)."""
    found, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if language is None:
                language, start, lines = line[3:].strip(), number + 1, []
            else:
                found.append((language, start, lines))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, f"{path.name}: a code block opened at line {start - 1} is never closed"
    return found


def command_lines() -> list[tuple[str, str]]:
    """(where, line) of every command in a command block; continuation lines joined, comments dropped."""
    found = []
    for page in PAGES:
        for language, start, lines in blocks(page):
            if language not in COMMAND_FENCES:
                continue
            joined: list[tuple[int, str]] = []
            for offset, line in enumerate(lines):
                line = line.removeprefix("$ ") if language == "console" else line
                if joined and joined[-1][1].endswith("\\"):
                    joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
                else:
                    joined.append((start + offset, line))
            for number, line in joined:
                if shlex.split(line, comments=True):
                    found.append((f"{page.relative_to(REPO)}:{number}", line))
    return found


COMMAND_LINES = command_lines()


def test_the_pages_have_commands_and_label_every_block():
    assert len(COMMAND_LINES) > 30, COMMAND_LINES  # the test reads the pages' blocks, not nothing
    for page in PAGES:
        for language, start, _ in blocks(page):
            assert language, f"{page.relative_to(REPO)}:{start - 1}: a block without a language (```text for output)"


# --- what each kind of line must be --------------------------------------------------------------------------


def without_environment(argv: list[str]) -> list[str]:
    """``VAR=value VAR2=value command ...`` → ``command ...``."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        argv = argv[1:]
    return argv


def check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", MAKEFILE, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", MAKEFILE, re.M))
    for word in argv[1:]:
        if "=" in word:
            assert word.split("=")[0] in variables, f"make variable {word.split('=')[0]} is not in the Makefile"
        else:
            assert word in targets, f"make target {word!r} is not in the Makefile ({sorted(targets)})"


def needs_elsewhere(argv: list[str]) -> bool:
    """A line whose dry run would need a service or a file the docs make first, or start a Ray to calibrate step
    times (``--estimate``): parse it only."""
    return any("://" in word or "outputs/" in word or word.isupper() or word == "--estimate" for word in argv)


def check_command(name: str, argv: list[str], remote: bool = False) -> None:
    """A flare-ray command's arguments: its own parser accepts them; with --dry-run (and where the line needs
    nothing made elsewhere) the dry run itself succeeds."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = (getattr(module, "parser", None) or module.build_parser)()
    if argv in (["--help"], ["-h"]):
        return
    args = parser.parse_args(argv)  # exits 2 on an unknown option or a missing argument
    dry_run = "--dry-run" in {o for a in parser._actions for o in a.option_strings}
    config = getattr(args, "config", None)  # predict's dry run reads MLflow: its lines are parsed only
    if not dry_run or remote or needs_elsewhere(argv) or config is None or not (REPO / str(config)).is_file():
        return
    result = module.main([*argv, "--dry-run"] if "--dry-run" not in argv else argv)
    assert result in (0, [], None) or isinstance(result, list), f"flare-ray {name} {shlex.join(argv)}: {result}"


def check_click(command: click.Command, argv: list[str]) -> None:
    """Parse argv with a click command line (a group's subcommands resolved) without running it."""
    ctx = command.make_context(command.name or "cli", list(argv))
    while isinstance(command, click.Group):
        args = [*ctx._protected_args, *ctx.args]
        if not args:
            return
        name, command, rest = command.resolve_command(ctx, args)
        ctx = command.make_context(name, rest, parent=ctx)


def check_python_module(module: str, argv: list[str], remote: bool) -> None:
    name = module.removeprefix("flare_ray.")
    if name in COMMANDS:
        check_command(name, argv, remote)
        return
    imported = importlib.import_module(module)
    assert callable(getattr(imported, "main", None)), f"python -m {module}: no main()"


def check_line(line: str) -> None:
    argv = without_environment(shlex.split(line, comments=True))
    program, rest = argv[0], argv[1:]
    if tuple(argv[:3]) in SETUP:
        return
    if program == "make":
        check_make(argv)
    elif program == f"{VENV}flare-ray":
        assert rest, "flare-ray without a command"
        if rest[0] in ("--help", "-h", "--version"):
            return
        assert rest[0] in COMMANDS, f"no command {rest[0]!r} (flare-ray {'|'.join(COMMANDS)})"
        check_command(rest[0], rest[1:])
    elif program == f"{VENV}python" and rest[:1] == ["-m"]:
        check_python_module(rest[1], rest[2:], remote=False)
    elif program == f"{VENV}python":
        assert (REPO / rest[0]).is_file(), f"no script {rest[0]}"
    elif program == f"{VENV}mlflow":
        from mlflow.cli import cli

        check_click(cli, rest)
    elif program == f"{VENV}ray":
        from ray.scripts.scripts import cli

        ray_args, _, entrypoint = shlex.join(rest).partition(" -- ")
        check_click(cli, [*shlex.split(ray_args), *(["--", "true"] if entrypoint else [])])
        if entrypoint:  # runs on the cluster, in its Python: `python -m flare_ray.<command> ...`
            entry = shlex.split(entrypoint)
            assert entry[:2] == ["python", "-m"], entry
            check_python_module(entry[2], entry[3:], remote=True)
    elif program in ("flare-ray", "mlflow", "ray", "python") or program.startswith("python"):
        pytest.fail(f"{program}: not on PATH after `make quickstart`; spell it {VENV}{program} (or a make target)")
    else:
        pytest.fail(f"{program}: a program this test does not know; teach it how to check the line")


@pytest.mark.parametrize("where,line", COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_every_documented_command_parses_as_typed(where, line, capsys):
    try:
        check_line(line)
    except SystemExit as exit_:  # argparse's way of refusing
        pytest.fail(f"{where}: `{line}` exits {exit_.code}: {capsys.readouterr().err.strip()}")
    except click.ClickException as err:
        pytest.fail(f"{where}: `{line}`: {err.format_message()}")


# --- links ----------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The page without its code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`(?!\])", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, spaces to hyphens, punctuation dropped, a repeated
    one numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S), re.M):
        slug = "".join(c for c in heading.strip().lower().replace(" ", "-") if c.isalnum() or c in "-_")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_relative_link_and_anchor_resolves():
    checked, broken = 0, []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            checked += 1
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target}: no heading with that anchor")
    assert checked > 40
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_readme_and_reaches_every_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    index = (REPO / "docs" / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name}" in index, f"docs/README.md does not link {page.name}"
    for image in ("mlflow-runs.png", "report-bars.png", "report-curves.png"):
        assert f"](docs/images/{image})" in readme, image


# --- the generated configuration reference -------------------------------------------------------------------


def test_the_configuration_reference_is_what_the_schema_writes():
    from flare_ray.experiment.reference import COMMAND, reference

    written = (REPO / "docs" / "config-reference.md").read_text()
    assert written == reference(), f"docs/config-reference.md is stale: regenerate it with `{COMMAND}` (make docs)"


def test_the_configuration_reference_describes_every_key():
    """Every key of the schema has a description, so the reference has no blank row."""
    from flare_ray.experiment.reference import reference

    rows = [line for line in reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    cells = [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]  # a cell's own | is escaped: \|
    assert all(len(row) == 4 for row in cells), [row for row in cells if len(row) != 4]
    blank = [row[0].strip() for row in cells if not row[3].strip()]
    assert not blank, f"keys without a description= in their Field: {blank}"
    for key in ("`method.flare.fusion`", "`training.learning_rate`", "`search.space.<key>.log`", "`storage_path`"):
        assert any(row.startswith(f"| {key} |") for row in rows), key
