"""Render what runs on hosts from deploylib/templates/ (package data, read with
importlib.resources, so an installed wheel renders as a checkout does): pure functions
returning text."""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from deploylib.errors import DeployError
from deploylib.facts import RECORD_SHAPES
from deploylib.plan import MODES

if TYPE_CHECKING:  # render reads what config parsed; it never parses
    import jinja2

    from deploylib.config import Environment

# Package data: the same files in a checkout and in an installed wheel.
TEMPLATES = resources.files("deploylib") / "templates"


class Shell(str):
    """Text that is shell already: a value the q filter quoted, or the command the operator
    wrote in deploy.toml (restart_command)."""


# What a value may be to appear in a template unquoted (comments and systemd units
# included): one plain word, nothing a shell or a unit file reads as syntax.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9._~/:@%+=,-]*")


def _finalize(value: Any) -> Any:
    """Every value a template prints: shell already, escaped markup (the Jenkins job
    XML's `| e`), a number, or a plain word; anything else is refused, so a hostile value
    read back (a record, a state file, a handoff) can never become a host's command."""
    from markupsafe import Markup

    if isinstance(value, Shell | Markup | bool | int | float):
        return value
    if isinstance(value, str) and _PLAIN_WORD.fullmatch(value):
        return value
    raise DeployError(f"refusing to put {value!r} unquoted into a template",
                      fix="quote it with the q filter in the template (values must be plain)")


def _quote_words(values: Any) -> Shell:
    return Shell(" ".join(shlex.quote(str(v)) for v in values))


def _heredoc(text: str, delimiter: str) -> Shell:
    """Text between `<<'DELIMITER'` and its end line: taken literally by the shell, as
    long as no line of it is the delimiter."""
    if delimiter in text.splitlines():
        raise DeployError(f"text for a here-document holds its end line {delimiter}",
                          fix="remove that line")
    return Shell(text)


def _curl_config(url: str) -> Shell:
    """A URL as one double-quoted curl config value (curl reads \\ and \" in it)."""
    if any(c in url for c in '"\\\n\r'):
        raise DeployError("a presigned URL holds a quote, a backslash or a line break",
                          fix="report it: S3 never signs such a URL")
    return Shell(f'"{url}"')


@lru_cache(maxsize=1)
def _jinja() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("deploylib", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # shell, not HTML: values are quoted with the q filter
        finalize=_finalize,
    )
    env.filters["q"] = lambda v: Shell(shlex.quote(str(v)))
    env.filters["qwords"] = _quote_words
    env.filters["heredoc"] = _heredoc
    env.filters["curl_config"] = _curl_config
    return env


def render(name: str, **values: Any) -> str:
    return _jinja().get_template(name).render(**values)


def unit(*, service: str, service_user: str, app_root: str, app_port: int) -> str:
    return render("app.service.j2", service=service, service_user=service_user,
                  app_root=app_root, app_port=app_port)


def provision_script(*, packages: list[str], service: str, service_user: str, app_root: str,
                     app_port: int, lock_timeout: int = 300) -> str:
    return render("provision.sh.j2", packages=packages, service=service,
                  service_user=service_user, app_root=app_root,
                  unit=unit(service=service, service_user=service_user, app_root=app_root,
                            app_port=app_port),
                  lock_timeout=lock_timeout)


def first_boot_script(*, timeout: int) -> str:
    """Wait for cloud-init to finish on a host just launched (exit 7: it failed)."""
    return render("first-boot.sh.j2", timeout=timeout)


# Where a pushed release lands on a host (ssh.Connection.put_private makes it): a
# directory made for it, which the install script removes with it. Its name carries a
# label (the instance id), so a leftover says whose it was.
PUSH_LABEL = re.compile(r"[a-z0-9-]{1,40}")
PUSHED = re.compile(r"/var/tmp/deploylib-push\.[a-z0-9-]{1,40}\.[A-Za-z0-9]{10}/release\.tar\.gz")


def push_script(label: str) -> str:
    """The host's side of a push: a new root-only directory, the file streamed into it,
    its path printed."""
    if not PUSH_LABEL.fullmatch(label):
        raise ValueError(f"{label!r} is not a push label (an instance id)")
    return (f"umask 077 && d=$(mktemp -d /var/tmp/deploylib-push.{label}.XXXXXXXXXX) && "
            'cat > "$d/release.tar.gz" && echo "$d/release.tar.gz"')


def install_script(*, version: str, sha256: str, app_root: str, app_port: int,
                   health_path: str, health_check: str, service: str, service_user: str,
                   app: dict[str, Any], restart_command: str, keep_releases: int,
                   url: str | None = None, pushed_path: str | None = None,
                   fetch_timeout: int = 300, health_timeout: int = 30) -> str:
    """The install script for one release; exactly one of url / pushed_path is given.
    `restart_command` (re)starts the app on the release switched to, back and forth alike:
    a graceful rollout gives its reload command here. `app`: how a release runs where its
    release.toml is silent (Manifest.for_host of the environment's app table)."""
    if (url is None) == (pushed_path is None):
        raise ValueError("give exactly one of url or pushed_path")
    if pushed_path is not None and not PUSHED.fullmatch(pushed_path):
        raise ValueError(f"{pushed_path!r} is not where put_private lands a release")
    return render(
        "install.sh.j2", version=version, sha256=sha256, app_root=app_root,
        app_port=app_port, health_path=health_path,
        # the operator's own command, from deploy.toml: shell by design
        restart_command=Shell(restart_command),
        keep_releases=keep_releases, source="url" if url else "push", url=url,
        pushed_path=pushed_path, fetch_timeout=fetch_timeout, health_timeout=health_timeout,
        service=service, service_user=service_user, app=_app_defaults(app),
        health_check=health_check,
    )


def _program(name: str) -> str:
    """A Python program of the templates, as a host runs it (`python3 -c`): its docstring,
    for the reader here, left out of the user data (16 KB at most)."""
    import ast

    source = resources.files("deploylib").joinpath("templates", name).read_text()
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        source = "\n".join(source.splitlines()[body[0].end_lineno or 0:]).lstrip("\n")
    return source


def boot_script(*, group: str, hook: str, version: str, sha256: str, version_id: str | None,
                record_parameter: str, record_region: str, bucket: str, key_prefix: str,
                store_region: str, app_root: str, app_port: int, health_path: str,
                health_check: str, service: str, service_user: str, app: dict[str, Any],
                restart_command: str, keep_releases: int, fetch_timeout: int = 300,
                health_timeout: int = 30) -> str:
    """A server group's user data: at first boot, the release the environment serves put
    on the instance (the install script, fed from the store), then its launch lifecycle
    hook completed. `version`/`sha256`/`version_id`: the release the group was made with,
    which its instances run while the record names another group live."""
    return render(
        "boot.sh.j2", group=group, hook=hook, version=version, sha256=sha256,
        version_id=version_id or "-", record_parameter=record_parameter,
        record_region=record_region, record_request=json.dumps({"Name": record_parameter}),
        boot_record=_program("boot_record.py"), boot_sign=_program("boot_sign.py"),
        shapes=json.dumps(RECORD_SHAPES), bucket=bucket, key_prefix=key_prefix,
        store_region=store_region, app_root=app_root, app_port=app_port, health_path=health_path,
        restart_command=Shell(restart_command), keep_releases=keep_releases, source="store",
        fetch_timeout=fetch_timeout, health_timeout=health_timeout, service=service,
        service_user=service_user, app=_app_defaults(app), health_check=health_check)


def _app_defaults(app: dict[str, Any]) -> dict[str, Any]:
    """The environment's defaults for how a release runs, every key the host's scripts
    read (release.sh.j2 quotes each one)."""
    from deploylib.manifest import Manifest

    known = Manifest().for_host()
    if set(app) != set(known):
        raise ValueError(f"app defaults need exactly {sorted(known)}")
    return app


def serving_script(*, app_root: str, service: str) -> str:
    """Prints the release the host's app runs from (proven on the host), or nothing."""
    return render("serving.sh.j2", app_root=app_root, service=service)


def idle_script(*, app_port: int, quiet: float, ceiling: float, poll: float = 0.1) -> str:
    """Waits until nothing from the load balancer is in flight on the host (exit 0), up to
    the deregistration delay (exit 8); exit 9 when it cannot tell (no /proc/net/tcp)."""
    return render("idle.sh.j2", app_port=app_port, quiet=f"{float(quiet):g}",
                  ceiling=f"{float(ceiling):g}", poll=f"{float(poll):g}")


def iam_policy(env: Environment) -> str:
    """deploylib/templates/iam-policy.json for one environment: its artifact bucket, its lock table
    and its name (what its resources are tagged `deploy:env` with: EC2's writes are
    scoped to them) in place of the placeholders (each checked by the config's schema);
    its server groups' names (`<service>-<env>-v*`) and the role its instances launch with
    (passed to EC2 only); its target groups, one per region, as the only ones it may
    register hosts in; and —
    when its volumes are encrypted with keys of its own (`kms_keys`) — the use of those
    keys as EBS needs it (deploylib/templates/iam-policy-kms.json: EC2 asks KMS on the caller's
    behalf when it launches, images and copies)."""
    text = (TEMPLATES / "iam-policy.json").read_text()
    # The instance role is named as its instance profile (as the IAM console names both).
    role = env.instance_profile.rsplit("/", 1)[-1] or "no-instance-profile"
    text = text.replace("ARTIFACT_BUCKET", env.artifact_bucket).replace(
        "LOCK_TABLE", env.lock_table).replace("ENV_NAME", env.name).replace(
        "GROUP_PREFIX", env.group_prefix).replace("INSTANCE_ROLE", role)
    policy = json.loads(text)
    groups = []
    for region in env.all_regions:
        group = env.network(region)[2]
        # A name is the group's in that region whatever its id; an ARN is used as given.
        arn = group if group.startswith("arn:") else \
            f"arn:aws:elasticloadbalancing:{region}:*:targetgroup/{group}/*"
        if arn not in groups:
            groups.append(arn)
    for statement in policy["Statement"]:
        if statement.get("Resource") == "TARGET_GROUPS":
            statement["Resource"] = groups
    if env.kms_keys:
        kms = json.loads((TEMPLATES / "iam-policy-kms.json").read_text())["Statement"]
        policy["Statement"] += [{**s, "Resource": list(env.kms_keys)} for s in kms]
    if env.transport == "ssm":
        policy["Statement"] += _runcommand("iam-policy-runcommand.json", env)
    return json.dumps(policy, indent=2) + "\n"


def _runcommand(template: str, env: Environment) -> list[dict[str, Any]]:
    """The statements Run Command needs (transport = "ssm"), for one environment."""
    text = (TEMPLATES / template).read_text().replace(
        "ARTIFACT_BUCKET", env.artifact_bucket).replace("ENV_NAME", env.name)
    return list(json.loads(text)["Statement"])


def instance_policy(env: Environment) -> str:
    """deploylib/templates/iam-policy-instance.json for one environment: what a server group's
    instance role needs at boot (deploylib/templates/boot.sh.j2) — read the record, fetch the
    environment's releases, complete its own group's launch lifecycle hook — and with
    transport = "ssm", what its SSM agent needs (AmazonSSMManagedInstanceCore's actions,
    and writing command output under the environment's prefix)."""
    text = (TEMPLATES / "iam-policy-instance.json").read_text()
    text = text.replace("RECORD_PARAMETER", env.record_parameter.lstrip("/")).replace(
        "ARTIFACT_BUCKET", env.artifact_bucket).replace("ENV_NAME", env.name).replace(
        "GROUP_PREFIX", env.group_prefix)
    if env.transport != "ssm":
        return text
    policy = json.loads(text)
    policy["Statement"] += _runcommand("iam-policy-instance-runcommand.json", env)
    return json.dumps(policy, indent=2) + "\n"


# The pipeline's parameters: the job's, as `invoke jenkins.setup` makes it (the pipeline
# itself declares none, so the job's stay as they are; ENV lists deploy.toml's
# environments).
PIPELINE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "MODE", "choices": list(MODES),
     "description": "immutable: bake a new image; rebake-light: new instances from the live "
                    "image plus the release; in-place: the release on the live hosts"},
    {"name": "VERSION", "default": "", "description": "Release version, e.g. 1.2.3"},
    {"name": "ARTIFACT", "default": "",
     "description": "Release tarball in the workspace; empty builds the app in app_source"},
    {"name": "ENV", "choices": [""], "description": "Environment in deploy.toml (none by "
     "default: a build names the one it deploys to)"},
    # (not RUN_ID: a parameter is an environment variable the pipeline's own env.RUN_ID
    # could not then be set over)
    {"name": "BAKE_RUN", "default": "",
     "description": "Set by `invoke bake`: the run whose images to test and promote, as the "
                    "environment's store keeps it"},
    {"name": "KEEP_ON_ERROR", "boolean": True, "default": False,
     "description": "On failure, leave what the run made for inspection"},
]
RECORD_PARAMETERS = [
    {"name": name, "default": "", "description": text} for name, text in (
        ("ENV", "Environment"), ("RELEASE", "Release made live in place"),
        ("RUN_ID", "The hotfix's run id"), ("HOSTS", "Hosts it went to"))]


def jenkins_jobs(env: Environment, environments: list[str]) -> dict[str, str]:
    """config.xml of every job the tool needs, by job name. `environments`: what the
    pipeline's ENV offers (deploylib.pipeline.choices), after an empty first choice — a
    build names its environment, it never falls to a default one."""
    j = env.jenkins
    common = {"repository": j.repository, "branch": j.branch}
    parameters = [dict(p, choices=["", *environments]) if p["name"] == "ENV" else p
                  for p in PIPELINE_PARAMETERS]
    record_script = (TEMPLATES / "jenkins" / "record-hotfix.groovy").read_text()
    return {
        j.pipeline_job: render("jenkins/pipeline.xml.j2", job=j.pipeline_job, script=None,
                               parameters=parameters, **common,
                               description="Deploy a release: immutable, rebake-light or "
                               "in-place. Stages come from `invoke plan`."),
        j.promote_job: render("jenkins/pipeline.xml.j2", job=j.promote_job, script=None,
                              parameters=parameters, **common,
                              description="Test and promote the images `invoke bake` "
                              "handed off (BAKE_RUN); the same Jenkinsfile."),
        j.record_job: render("jenkins/pipeline.xml.j2", job=j.record_job,
                             script=record_script, parameters=RECORD_PARAMETERS, **common,
                             description="One build per hotfix made in place."),
    }
