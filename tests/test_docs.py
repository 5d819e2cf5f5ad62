"""The docs say only what runs: every `invoke …` / `deploylib …` command in README.md and
docs/ parses against the tool's own tasks and flags, and every environment a command
names (`--env NAME`) is one the examples define — this repository's deploy.toml or the
example team's."""

from __future__ import annotations

import re
import shlex

import pytest
from invoke.parser import ParseError, Parser

from deploylib import config
from deploylib import plan as planning
from deploylib.tasks import ns
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENVIRONMENTS = (set(config.load(REPO / "deploy.toml").environments)
                | set(config.load(REPO / "examples/team-repo/deploy.toml").environments))
_INLINE = re.compile(r"`((?:invoke|deploylib) [^`]+)`")
_BLOCK = re.compile(r"^\s*(?:\$ )?((?:invoke|deploylib) .+?)\s*(?:#.*)?$")
# A placeholder the docs write for a value (V, ENV, ID, PATH, …), or elided text.
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$|…")


def commands() -> list[tuple[str, str]]:
    """(where, command) for every command the docs show."""
    found = []
    for doc in DOCS:
        fenced = False
        for n, line in enumerate(doc.read_text().splitlines(), start=1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            where = f"{doc.relative_to(REPO)}:{n}"
            if fenced:
                if m := _BLOCK.match(line):
                    found.append((where, m.group(1)))
            else:
                found += [(where, c) for c in _INLINE.findall(line)]
    return found


def _argv(command: str) -> list[str]:
    """The command's arguments, optional ones ([--env E]) in, a placeholder value (V, ID)
    made a plain one (so a number's flag parses), redirections and pipes out."""
    text = command.replace("[", " ").replace("]", " ").split(" > ")[0].split(" | ")[0]
    return [PLAIN if _PLACEHOLDER.search(word) else word for word in shlex.split(text)[1:]]


PLAIN = "1"


def test_the_docs_show_commands_at_all():
    assert len(commands()) > 60


@pytest.mark.parametrize("where, command", commands(), ids=[w for w, _ in commands()])
def test_every_command_in_the_docs_parses_against_the_tasks(where, command):
    argv = _argv(command)
    if not argv or argv[0].startswith("-") or argv[0] == PLAIN:  # --list, `invoke TASK`
        return
    parser = Parser(contexts=ns.to_contexts())
    try:
        parsed = parser.parse_argv(argv)
    except ParseError as exc:
        pytest.fail(f"{where}: `{command}` does not parse: {exc}")
    for context in parsed:
        env = context.args.get("env")
        if env is not None and env.value and env.value != PLAIN:
            assert env.value in ENVIRONMENTS, f"{where}: --env {env.value} is in no example"
        mode = context.args.get("mode")
        if mode is not None and mode.value and mode.value != PLAIN:
            assert mode.value in planning.MODES, f"{where}: --mode {mode.value}"


def test_every_doc_links_only_to_files_that_are_there():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)} -> {target}"
