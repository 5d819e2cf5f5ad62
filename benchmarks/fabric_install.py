"""The Fabric contender: one uploaded install script per host, a thread per host.

    python benchmarks/fabric_install.py JOB.json

JOB: hosts [[address, port]], user, key, known_hosts, script (path). Host keys are
checked against known_hosts (RejectPolicy), as the other contenders do.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import paramiko
from fabric import Connection


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    connections = []
    for address, port in job["hosts"]:
        c = Connection(address, user=job["user"], port=port,
                       connect_kwargs={"key_filename": job["key"], "look_for_keys": False,
                                       "allow_agent": False})
        c.client.load_host_keys(job["known_hosts"])
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        connections.append(c)

    def install(c: Connection) -> int:
        # Lab hosts share this machine's /tmp: one script path per host and per run (a
        # file another user left there cannot be written over by the login user).
        remote = f"/tmp/fabric-install-{c.host}-{os.getpid()}.sh"
        c.put(job["script"], remote)
        return c.run(f"sudo -n bash {remote}", hide=True, warn=True).exited

    with ThreadPoolExecutor(max_workers=len(connections)) as pool:
        codes = list(pool.map(install, connections))
    failed = [c.host for c, code in zip(connections, codes, strict=True) if code != 0]
    print(json.dumps({"failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
