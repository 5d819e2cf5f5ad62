"""Errors are one line: resource, problem, fix."""

from deploylib.errors import DeployError, InputError, RemoteCommandError, StepFailed


def test_one_line_with_resource_and_fix():
    e = DeployError("it failed\nbadly.", resource="i-123", fix="look at it")
    assert e.line() == "i-123: it failed badly. Fix: look at it"
    assert str(e) == e.line()


def test_bad_input_exits_two():
    assert InputError("x").exit_code == 2 and DeployError("x").exit_code == 1


def test_step_failed_names_every_host_and_the_first_cause():
    err = StepFailed("install-release", {
        "i-1": RemoteCommandError("remote command exited 5: unhealthy", resource="i-1"),
        "i-2": RemoteCommandError("remote command exited 3: checksum", resource="i-2")})
    line = err.line()
    assert "stage install-release on i-1, i-2" in line and "exited 5" in line
