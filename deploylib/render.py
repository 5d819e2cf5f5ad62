"""Render what runs on hosts from templates/: pure functions returning text."""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def _jinja() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # shell, not HTML: values are quoted with the q filter
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def render(name: str, **values: Any) -> str:
    return _jinja().get_template(name).render(**values)


def unit(*, service: str, app_root: str, app_port: int) -> str:
    return render("app.service.j2", service=service, app_root=app_root, app_port=app_port)


def provision_script(*, packages: list[str], service: str, app_root: str,
                     app_port: int) -> str:
    return render("provision.sh.j2", packages=packages, service=service, app_root=app_root,
                  unit=unit(service=service, app_root=app_root, app_port=app_port))


def install_script(*, version: str, sha256: str, app_root: str, app_port: int,
                   health_path: str, restart_command: str, keep_releases: int,
                   url: str | None = None, pushed_path: str | None = None,
                   fetch_timeout: int = 300, health_timeout: int = 30) -> str:
    """The install script for one release; exactly one of url / pushed_path is given."""
    if (url is None) == (pushed_path is None):
        raise ValueError("give exactly one of url or pushed_path")
    if url is not None and ('"' in url or "\n" in url):
        raise ValueError("a presigned URL never contains quotes or newlines")
    return render(
        "install.sh.j2", version=version, sha256=sha256, app_root=app_root,
        app_port=app_port, health_path=health_path, restart_command=restart_command,
        keep_releases=keep_releases, source="url" if url else "push", url=url,
        pushed_path=pushed_path, fetch_timeout=fetch_timeout, health_timeout=health_timeout,
    )
