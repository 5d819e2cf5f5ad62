"""Every failure the tool reports, as one tree rooted at DeployError.

    DeployError                 something went wrong; carries the resource and the fix
    ├── InputError              bad input: config, flags, versions, paths (exit code 2)
    │   ├── ConfigError         deploy.toml itself is wrong (names the key)
    │   ├── AwsConfigError      an environment's AWS identity cannot be used: an unknown
    │   │                       profile, a role that cannot be assumed, another account
    │   └── PreflightFailed     the account is not ready for a deploy (preflight's checks)
    ├── StateError              a run's state file is missing, corrupt or in the wrong shape
    ├── CloudError              an AWS call failed for a reason that will not fix itself
    │   ├── CredentialsError    no AWS credentials, or they are invalid or expired
    │   ├── PermissionDenied    the identity may not make this call (names the action)
    │   └── Unreachable         the AWS endpoint could not be reached
    ├── WaitTimeout             a resource did not reach the wanted state before its deadline
    ├── HostError               a host could not be reached or a command on it failed
    │   ├── HostKeyError        the host's SSH key is unknown or differs from the trusted one
    │   └── RemoteCommandError  a remote script exited non-zero (carries its output tail)
    ├── StepFailed              a stage failed on some of its hosts (carries each host's error)
    ├── WindowFailed            a verification window saw the release hurt users: the
    │                           metric or alarm that said so (exit code 4)
    ├── LockHeld                another run holds the environment's deploy lock (exit code 3)
    └── JenkinsError            Jenkins refused, could not be reached, or the build failed

Every error renders as one line: what happened, about which resource, and what to do
next. Nothing secret goes into a message: callers pass resource ids, never URLs with
signatures or credentials.
"""

from __future__ import annotations


class DeployError(Exception):
    """Root of the tree; `exit_code` is what the command line exits with."""

    exit_code = 1

    def __init__(self, problem: str, *, resource: str | None = None, fix: str | None = None):
        self.problem = problem
        self.resource = resource
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        where = f"{self.resource}: " if self.resource else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        text = f"{where}{self.problem.rstrip('.')}.{fix}"
        # One line, always: multi-line remote output belongs in the run state, not here.
        return " ".join(text.split())


class InputError(DeployError):
    exit_code = 2


class ConfigError(InputError):
    pass


class AwsConfigError(InputError):
    """The environment's AWS identity is wrong, not the call: nothing was written."""


class PreflightFailed(InputError):
    """Checks before a run found the account not ready; names the first, counts the rest."""

    def __init__(self, failed: list) -> None:
        self.failed = failed
        first = failed[0].error
        more = (f" (and {len(failed) - 1} more: `invoke preflight` lists them)"
                if len(failed) > 1 else "")
        super().__init__(f"preflight {failed[0].name}: {first.problem}{more}",
                         resource=first.resource, fix=first.fix)


class StateError(DeployError):
    pass


class CloudError(DeployError):
    """`code` is AWS's error code when AWS answered (e.g. InvalidInstanceID.NotFound)."""

    def __init__(self, problem: str, *, resource: str | None = None, fix: str | None = None,
                 code: str | None = None):
        self.code = code
        super().__init__(problem, resource=resource, fix=fix)


class CredentialsError(CloudError):
    pass


class PermissionDenied(CloudError):
    pass


class Unreachable(CloudError):
    pass


class WaitTimeout(DeployError):
    pass


class HostError(DeployError):
    pass


class HostKeyError(HostError):
    pass


class RemoteCommandError(HostError):
    def __init__(self, problem: str, *, resource: str, fix: str | None = None,
                 exit_status: int = 1, output: str = ""):
        self.exit_status = exit_status
        self.output = output
        super().__init__(problem, resource=resource, fix=fix)


class StepFailed(DeployError):
    def __init__(self, stage: str, failures: dict[str, Exception], *, fix: str | None = None,
                 kind: str = "host"):
        self.stage = stage
        self.failures = failures
        first = next(iter(failures.values()))
        detail = getattr(first, "problem", str(first))
        super().__init__(
            f"{len(failures)} {kind}(s) failed; first: {detail}",
            resource=f"stage {stage} on {', '.join(failures)}",
            fix=fix or getattr(first, "fix", None) or "see the run state, then `invoke resume`",
        )


class WindowFailed(DeployError):
    """A verification window failed: users saw more errors, slower answers, or a team's
    alarm fired. The run stops and puts back what served before (exit code 4)."""

    exit_code = 4


class LockHeld(DeployError):
    exit_code = 3


class JenkinsError(DeployError):
    pass


def error_line(exc: BaseException) -> str:
    """One line for any failure: ours carry their resource and fix; others their type."""
    if isinstance(exc, DeployError):
        return exc.line()
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
