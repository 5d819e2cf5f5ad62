"""A run made of test steps, for the engine's tests (runner, rollout, regions).

The steps are registered in the catalog as a team's would be; what each does is set per
test in `Script`. The run's lock is a real one, in moto's DynamoDB; no host is needed.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploylib import catalog, config, ssh
from deploylib.context import Context
from deploylib.state import RunState
from tests.conftest import write_config


@dataclass
class Script:
    """What the test steps do this test: each name's action (None: succeed)."""

    actions: dict[str, Callable[[Context], None]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str, ctx: Context) -> None:
        with self.lock:
            lane = ctx.region or (",".join(h.instance_id for h in ctx.batch)
                                  if ctx.batch is not None else "")
            self.calls.append(f"{name}@{lane}" if lane else name)
        action = self.actions.get(name)
        if action is not None:
            action(ctx)


SCRIPT = Script()
NAMES = ("t-make", "t-check", "t-commit", "t-fail", "t-undo-a", "t-undo-b", "t-one",
         "t-two", "t-drain", "t-install", "t-back", "t-recover", "t-revert")


def _register(name: str) -> None:
    def fn(ctx: Context) -> None:
        SCRIPT.run(name, ctx)

    fn.__doc__ = f"Test step {name}."
    fn.__qualname__ = fn.__name__ = name.replace("-", "_")
    catalog.step(name)(fn)


for _name in NAMES:
    _register(_name)


class NoProvider:
    """The engine's tests launch nothing and open no SSH connection."""

    def trusted_keys(self, clients: Any, instance: Any) -> tuple:
        return ()


def make_context(aws_clients: Any, tmp_path: Path, **overrides: Any) -> Context:
    table = f"locks-{secrets.token_hex(4)}"
    aws_clients.dynamodb().create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    env = config.load(write_config(tmp_path, lock_table=table, **overrides)).environment("lab")
    state = RunState.create(env.state_dir, env="lab", mode="in-place", version="2.0.0",
                            artifact="")
    SCRIPT.actions.clear()
    SCRIPT.calls.clear()
    return Context(env=env, state=state, provider=NoProvider(), aws=aws_clients,  # type: ignore[arg-type]
                   ssh=ssh.Pool(ssh.Credentials("nobody")))
