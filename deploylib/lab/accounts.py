"""The lab hosts' accounts, as on an Ubuntu AMI: a non-root login user with passwordless
sudo (Debian's `sudo`, a NOPASSWD rule), root logins refused.

Lab hosts share this machine's user database, so the login user is a real account here,
made once by the lab daemon (which runs as root, as every sshd that serves logins for
other users must). The service user the app runs as is made by provisioning, on a lab
host as on a real one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploylib.errors import InputError

LOGIN_USER = "deploylab"
SUDOERS = Path("/etc/sudoers.d/deploylab")
# As cloud-init writes it for `ubuntu`, and two lab-only allowances: the PATH that puts
# the lab's stand-ins (systemctl, apt-get, cloud-init) first survives sudo, and so does
# the variable that tells the host's scripts where its root directory is.
RULE = (f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n"
        f'Defaults:{LOGIN_USER} !secure_path, env_keep += "DEPLOY_HOST_ROOT"\n')


def ensure_login_user() -> str:
    """The login user, with its sudo rule; made if missing. Returns its name."""
    missing = [tool for tool in ("sudo", "visudo", "useradd") if not _which(tool)]
    if missing:
        raise InputError(f"the lab's hosts need {', '.join(missing)} on this machine",
                         resource="lab", fix="apt-get install sudo (./dev setup does)")
    try:
        pwd.getpwnam(LOGIN_USER)
    except KeyError:
        _as_root("create the lab's login user")
        # '*': no password, yet not locked ('!'), which sshd without PAM refuses even a
        # key login for. Ubuntu's sshd asks PAM, which does not look.
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*",
                        LOGIN_USER], check=True, capture_output=True)
    if not SUDOERS.is_file() or SUDOERS.read_text() != RULE:
        _as_root("write the lab's sudo rule")
        with tempfile.NamedTemporaryFile("w", dir=SUDOERS.parent, delete=False,
                                         prefix=".deploylab.") as f:
            f.write(RULE)
        os.chmod(f.name, 0o440)
        # visudo refuses a rule that would break sudo for everyone: never install one.
        subprocess.run(["visudo", "-cqf", f.name], check=True, capture_output=True)
        os.replace(f.name, SUDOERS)
    return LOGIN_USER


def reachable_by_services(directory: Path) -> Path | None:
    """The first directory above (or at) `directory` that other users cannot pass
    through, or None. Services run as their own user and must reach their release."""
    for d in [directory, *directory.parents]:
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _as_root(what: str) -> None:
    if os.geteuid() != 0:
        raise InputError(f"the lab needs root to {what}", resource="lab",
                         fix="run the lab as root (sshd serves other users' logins only "
                         "as root)")


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()
