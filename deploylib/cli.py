"""The `deploylib` command: the tool's Invoke collection as a program of its own, so
`deploylib hotfix …` anywhere is `invoke hotfix …` in a repository whose tasks.py takes
the collection."""

from __future__ import annotations

import signal
import sys

from invoke import Program

from deploylib import __version__


def main(argv: list[str] | None = None) -> None:
    # A closed pipe on stdout (`deploylib plan --json | head`) ends the command quietly,
    # as it does any Unix filter, not with a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    from deploylib.tasks import ns

    Program(namespace=ns, version=__version__, name="deploylib",
            binary="deploylib").run(argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
