"""Every ``omnifer ...`` command that the code names (error messages, hints, help texts) exists.

An error that says "run 'omnifer models promote'" when there is no such command leaves the
operator guessing (issue 23). This test reads every string literal in ``omnifer/``, ``tasks/``
and ``flows/``, takes each quoted mention of a command (``'omnifer X ...'``, ```omnifer X ...```,
``.venv/bin/omnifer X ...``), walks the Typer app along its words and checks that a command is
found, that each ``--option`` the mention shows is one of that command's options, and that
``omnifer X --help`` exits 0.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer
from helpers_ast import parse
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
MENTION = re.compile(r"(?:(?<=['`])|(?<=bin/))omnifer ([^'`\n]*)")


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = parse(path)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def mentions() -> list[tuple[str, str]]:
    """``(where, words after 'omnifer')`` for every quoted mention of a command."""
    found = []
    for folder in ("omnifer", "tasks", "flows"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, text in _strings(path):
                for match in MENTION.finditer(text):
                    found.append((f"{path.relative_to(REPO)}:{line}", match.group(1)))
    return found


def _is_group(command: object) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _resolve(root: object, words: str) -> tuple[list[str], object, list[str]]:
    """The command path the words name, the command, and the --options they show."""
    tokens = [t.strip("[](),.;:") for t in words.split()]
    path: list[str] = []
    command = root
    rest = tokens
    while rest and _is_group(command) and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest[0]]
        rest = rest[1:]
    options = [t.split("=")[0] for t in rest if t.startswith("--")]
    return path, command, options


def test_the_scan_finds_the_mentions_it_must() -> None:
    """Guard against a scan that silently finds nothing (the test could not fail then)."""
    found = mentions()
    words = {w for _, w in found}
    assert len(found) > 20
    assert any(w.startswith("models register") for w in words)  # the no-model error
    assert any(w.startswith("rerun") for w in words)


@pytest.mark.parametrize("where,words", mentions(), ids=lambda v: str(v)[:60])
def test_every_command_named_in_the_code_exists(where: str, words: str) -> None:
    from omnifer.cli import app

    root = typer.main.get_command(app)  # Typer's own click: compare by shape, not class
    assert _is_group(root)
    path, command, options = _resolve(root, words)
    assert path, (
        f"{where}: 'omnifer {words}' names no command (known: {', '.join(root.commands)})")
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [o for o in options if o not in known]
    assert not unknown, f"{where}: 'omnifer {words}': {unknown} not options of " \
                        f"'omnifer {' '.join(path)}' ({sorted(known)})"
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, (where, res.output)
