"""deploylib: one library of deployment steps composed into three procedures —
immutable, rebake-light and in-place — run from Invoke tasks or a Jenkins pipeline.

The tasks are a collection a team's own tasks.py imports (`from deploylib.tasks import
ns`); the `deploylib` command runs the same collection from anywhere.
"""

# The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.2.0"
