"""This repository's Invoke tasks: the tool's own collection (deploylib.tasks), as a
team's tasks.py takes it (examples/team-repo/tasks.py)."""

from deploylib.tasks import ns

__all__ = ["ns"]
