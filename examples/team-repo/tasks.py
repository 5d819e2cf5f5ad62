"""The greeter team's tasks: deploylib's, as they are (`invoke --list`)."""

from deploylib.tasks import ns

__all__ = ["ns"]
