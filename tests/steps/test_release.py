"""The release steps' pieces that need no lab (every step runs end to end in tests/lab/)."""

from deploylib.steps import release
from tests.conftest import REPO


def test_every_install_failure_code_has_a_fix_for_the_operator():
    script = (REPO / "deploylib/templates/install.sh.j2").read_text()
    for code in release.INSTALL_FIXES:
        assert f"exit {code}" in script


def test_a_version_has_one_key_in_the_store_whatever_its_file_was_called():
    assert release.artifact_key("prod", "1.2.3") == "releases/prod/1.2.3.tar.gz"
