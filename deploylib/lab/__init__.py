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

import os
from pathlib import Path

LAB_DIR_ENV = "DEPLOY_LAB_DIR"
# moto accepts any credentials. The tool signs with the deployer's, which the lab holds
# to the environment's IAM policy (deploylib.lab.iam); the lab's own calls and the
# tests' set-up sign with the administrator's, which it does not.
LAB_CREDENTIALS = {"aws_access_key_id": "lab", "aws_secret_access_key": "lab-secret"}
LAB_ADMIN_CREDENTIALS = {"aws_access_key_id": "lab-admin",
                         "aws_secret_access_key": "lab-admin-secret"}
# What the lab's instance metadata service hands an instance launched with an instance
# profile (deploylib.lab.metadata); held to the instance role's policy.
LAB_INSTANCE_CREDENTIALS = {"aws_access_key_id": "lab-instance",
                            "aws_secret_access_key": "lab-instance-secret",
                            "aws_session_token": "lab-instance-session"}
# A second environment's deployer in the same account (a neighbour): held to the policy
# rendered for that environment, which a test writes (iam.NEIGHBOUR_POLICY_FILE); with
# none written, it is allowed nothing.
LAB_NEIGHBOUR_CREDENTIALS = {"aws_access_key_id": "lab-neighbour",
                             "aws_secret_access_key": "lab-neighbour-secret"}
BIN = Path(__file__).resolve().parent / "bin"


def lab_dir() -> Path:
    return Path(os.environ.get(LAB_DIR_ENV, ".lab")).resolve()
