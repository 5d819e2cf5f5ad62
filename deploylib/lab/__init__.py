"""The lab: the whole product on one machine, with no cloud account.

Real here: the AWS API over HTTP (moto in server mode), SSH (an OpenSSH sshd per
instance on its own loopback address), file transfer, the install script, the
application processes, health checks and the load balancer's traffic.

Emulated, and said so: what an instance *is* (a root directory plus an sshd, not a VM),
what an image *is* (a snapshot of that directory), OS packages (apt-get records the
package list instead of installing), the service manager (a small systemctl stand-in
that reads the same unit file systemd would), and AWS timing.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from deploylib.errors import InputError

LAB_DIR_ENV = "DEPLOY_LAB_DIR"
# The lab's keys, by who holds them: their access key ids are fixed, their secrets made
# afresh by each lab when it starts (`make_keys`) and kept in its directory, readable by
# its owner only — the lab's AWS endpoint answers only requests signed with a key it
# knows (deploylib.lab.sigv4), so no other user of the machine can act in it. The tool
# signs with the deployer's, which the lab holds to the environment's IAM policy
# (deploylib.lab.iam); the lab's own calls and the tests' set-up with the
# administrator's, which it does not; the instance key is what the lab's instance
# metadata service hands an instance launched with a profile (held to the instance
# role's policy); the neighbour's is a second environment's deployer in the same
# account, held to the policy rendered for that environment, which a test writes (and
# allowed nothing while there is none).
KEY_IDS = {"deployer": "lab", "admin": "lab-admin", "instance": "lab-instance",
           "neighbour": "lab-neighbour"}
KEYS_FILE = "keys.json"
BIN = Path(__file__).resolve().parent / "bin"


def lab_dir() -> Path:
    return Path(os.environ.get(LAB_DIR_ENV, ".lab")).resolve()


def make_keys(directory: Path) -> dict[str, dict[str, str]]:
    """New secrets for the lab's keys, written to its directory (0600) before its
    endpoint answers anything."""
    made = {who: {"aws_access_key_id": key_id, "aws_secret_access_key": secrets.token_urlsafe(30)}
            for who, key_id in KEY_IDS.items()}
    made["instance"]["aws_session_token"] = secrets.token_urlsafe(45)
    path = directory / KEYS_FILE
    temporary = path.with_name(f".{KEYS_FILE}.{os.getpid()}")
    with open(os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as f:
        json.dump(made, f)
    os.replace(temporary, path)
    return made


def credentials(who: str, directory: Path | None = None) -> dict[str, str]:
    """One of the running lab's keys (KEY_IDS: deployer, admin, instance, neighbour), as
    boto3 takes credentials."""
    path = (directory or lab_dir()) / KEYS_FILE
    try:
        return dict(json.loads(path.read_text())[who])
    except FileNotFoundError:
        raise InputError(f"the lab's keys are not there ({path} is missing)",
                         fix="start the lab with `invoke lab.up`") from None
