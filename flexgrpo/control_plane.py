"""The Redis control plane: what must outlive any process, and what an operator talks to.

Keys of run R (all JSON or plain strings, never pickle; bulk data never goes here):
  flexgrpo:runs                 set of run names
  flexgrpo:run:R                hash: config, status, step, policy_version, reward_version, updated_at
  flexgrpo:run:R:heartbeats     hash: worker id -> unix time of its last beat
  flexgrpo:run:R:ledger         hash: group id -> sampled | scored | trained (exactly-once training)
  flexgrpo:run:R:commands       list of operator commands (JSON), consumed in order by the driver
  flexgrpo:run:R:metrics        stream of per-step metrics (JSON in field "m")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

COMMAND_OPS = ("checkpoint", "pause", "resume", "stop", "swap_reward")
GROUP_STATES = ("sampled", "scored", "trained")


class CommandError(ValueError):
    """An operator command that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Command:
    op: str  # one of COMMAND_OPS
    args: dict[str, Any]  # swap_reward: {"rewards": [RewardSpec as dict, ...]}


class ControlPlane:
    def __init__(self, url: str, run: str) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.run = run
        self._key = f"flexgrpo:run:{run}"

    # ---- run registry ---------------------------------------------------------------------------------

    def register_run(self, config: dict) -> None:
        self.redis.sadd("flexgrpo:runs", self.run)
        self.redis.hsetnx(self._key, "step", 0)
        self.redis.hset(
            self._key, mapping={"config": json.dumps(config), "status": "starting", "updated_at": time.time()}
        )

    def update_run(self, **fields: Any) -> None:
        """Set run fields (status, step, policy_version, reward_version, ...)."""
        self.redis.hset(
            self._key,
            mapping={k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
            | {"updated_at": time.time()},
        )

    def run_info(self) -> dict[str, str]:
        return self.redis.hgetall(self._key)

    # ---- workers --------------------------------------------------------------------------------------

    def heartbeat(self, *workers: str) -> None:
        """Record that these workers (actor names: rollout-0, reward-1, learner-0, driver) answered just now."""
        self.redis.hset(f"{self._key}:heartbeats", mapping=dict.fromkeys(workers, time.time()))

    def heartbeat_ages(self) -> dict[str, float]:
        """Seconds since each worker's last heartbeat."""
        now = time.time()
        return {w: now - float(t) for w, t in sorted(self.redis.hgetall(f"{self._key}:heartbeats").items())}

    # ---- ledger ---------------------------------------------------------------------------------------

    def mark_groups(self, group_ids: list[str], state: str) -> None:
        if state not in GROUP_STATES:
            raise ValueError(f"group state must be one of {list(GROUP_STATES)}, got {state!r}")
        if group_ids:
            self.redis.hset(f"{self._key}:ledger", mapping=dict.fromkeys(group_ids, state))

    def group_states(self) -> dict[str, str]:
        return self.redis.hgetall(f"{self._key}:ledger")

    # ---- commands -------------------------------------------------------------------------------------

    def send_command(self, op: str, **args: Any) -> None:
        if op not in COMMAND_OPS:
            raise CommandError(f"command must be one of {list(COMMAND_OPS)}, got {op!r}")
        self.redis.rpush(f"{self._key}:commands", json.dumps({"op": op, "args": args}))

    def take_commands(self) -> list[Command]:
        """Pop every pending command, oldest first. A malformed one is reported, not dropped silently."""
        raw = self.redis.lpop(f"{self._key}:commands", 1000) or []
        commands = []
        for item in raw:
            try:
                data = json.loads(item)
                if data.get("op") not in COMMAND_OPS or not isinstance(data.get("args", {}), dict):
                    raise ValueError(f"op must be one of {list(COMMAND_OPS)}")
                commands.append(Command(data["op"], data.get("args", {})))
            except (ValueError, AttributeError) as err:
                self.redis.rpush(f"{self._key}:rejected_commands", json.dumps({"command": item, "error": str(err)}))
        return commands

    # ---- metrics --------------------------------------------------------------------------------------

    def publish_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.redis.xadd(f"{self._key}:metrics", {"m": json.dumps({"step": step} | metrics)}, maxlen=100_000)

    def read_metrics(self) -> list[dict]:
        return [json.loads(fields["m"]) for _, fields in self.redis.xrange(f"{self._key}:metrics")]
