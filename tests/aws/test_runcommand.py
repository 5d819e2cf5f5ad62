"""deploylib.aws.runcommand: the script as the document's commands, and results read as
Systems Manager gives them (the lab's Run Command answers: tests/lab/test_runcommand.py)."""

from __future__ import annotations

import subprocess

from hypothesis import example, given, settings
from hypothesis import strategies as st

from deploylib.aws import runcommand
from deploylib.errors import HostError, RemoteCommandError


def _as_the_agent_runs_it(lines: list[str]) -> subprocess.CompletedProcess:
    # The agent writes the commands to _script.sh (UTF-8, as the API carries them) and
    # runs it with sh. Bytes both ways: what is compared is the script's, not a locale's.
    return subprocess.run([b"sh", b"-c", "\n".join(lines).encode()], capture_output=True,
                          timeout=30, check=False)


def test_the_commands_run_the_script_exactly_as_bash_reads_it_over_ssh():
    script = "set -eu\nprintf '%s\\n' \"$0\" 'a $HOME `x` \\\\ \"q\"'\nexit 7\n"
    done = _as_the_agent_runs_it(runcommand.commands(script))
    assert done.returncode == 7
    assert done.stdout.decode() == "bash\na $HOME `x` \\\\ \"q\"\n"


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\r"),
               max_size=200))
@example("D\x80")  # a C1 control: two bytes in UTF-8, both kept
def test_any_text_the_script_prints_comes_back_unchanged(text):
    script = "cat <<'END_OF_TEXT'\n" + text.replace("END_OF_TEXT", "") + "\nEND_OF_TEXT\n"
    done = _as_the_agent_runs_it(runcommand.commands(script))
    assert done.returncode == 0
    assert done.stdout == (text.replace("END_OF_TEXT", "") + "\n").encode()


def test_the_commands_are_ascii_and_no_line_of_them_ends_the_here_document():
    lines = runcommand.commands("echo DEPLOY_SCRIPT_END\nDEPLOY=é\n")
    assert all(line.isascii() for line in lines)
    assert lines[0] == "base64 -d <<'DEPLOY_SCRIPT_END' | bash -s"
    assert lines[1:-1] and "DEPLOY_SCRIPT_END" not in lines[1:-1]
    assert lines[-1] == "DEPLOY_SCRIPT_END"


def test_the_output_key_is_where_the_agent_writes_it():
    assert runcommand.output_key("runcommand/prod/r1/", "c-1", "i-1", "stdout") == \
        "runcommand/prod/r1/c-1/i-1/awsrunShellScript/0.awsrunShellScript/stdout"


def test_each_status_becomes_the_error_an_operator_can_act_on():
    ok = runcommand._result(runcommand.Invocation("i-1", "Success", code=0, stdout="done\n"))
    assert ok == "done\n"
    failed = runcommand._result(runcommand.Invocation("i-1", "Failed", code=5,
                                                      stdout="a\nhealth failed\n"))
    assert isinstance(failed, RemoteCommandError)
    assert (failed.exit_status, failed.problem) == (5, "remote command exited 5: health failed")
    lost = runcommand._result(runcommand.Invocation("i-1", "DeliveryTimedOut",
                                                    details="DeliveryTimedOut"))
    assert type(lost) is HostError and "SSM agent did not take" in lost.fix
    timed = runcommand._result(runcommand.Invocation("i-1", "TimedOut", code=-1))
    assert isinstance(timed, RemoteCommandError) and timed.exit_status == -1
