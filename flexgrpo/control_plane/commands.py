"""Operator commands and their outcomes: an operator pushes a command with an id onto R:commands, the driver
takes them in order and records each one's outcome in R:command_outcomes; what cannot be parsed is rejected
with the reason and kept, newest first, in R:rejected_commands (see keys.py)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection

log = logging.getLogger("flexgrpo.control_plane")

COMMAND_OPS = ("checkpoint", "pause", "resume", "stop", "swap_reward", "scale")
COMMAND_OUTCOMES = ("done", "rejected", "failed")
REJECTED_KEPT = 20


class CommandError(ValueError):
    """An operator command that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Command:
    id: str  # uuid4 hex, the key of its outcome
    op: str  # one of COMMAND_OPS
    args: dict[str, Any]  # swap_reward: {"rewards": [RewardSpec as dict, ...]}; scale: {"pool": str, "workers": int}


class Commands:
    """The command queue, outcomes and rejected list of one run."""

    def __init__(self, connection: Connection) -> None:
        self._conn, run = connection, connection.run
        self._queue, self._outcomes = keys.commands(run), keys.command_outcomes(run)
        self._rejected = keys.rejected_commands(run)

    def send(self, op: str, **args: Any) -> str:
        """Queue an operator command; returns its id (wait for its outcome with `wait_for_outcome`)."""
        if op not in COMMAND_OPS:
            raise CommandError(f"command must be one of {list(COMMAND_OPS)}, got {op!r}")
        command_id = uuid.uuid4().hex
        self._conn.redis.rpush(self._queue, json.dumps({"id": command_id, "op": op, "args": args}))
        return command_id

    def take(self) -> list[Command]:
        """Pop every pending command, oldest first. An entry that is not UTF-8, not JSON, or not a known op with
        dict args is not returned: it is rejected (outcome recorded with the reason, kept in the list that
        `flexgrpo status` shows) and logged as a warning here."""
        commands = []
        for item in self._conn.raw.lpop(self._queue, 1000) or []:
            try:
                command = _parse_command(item)
            except CommandError as err:
                self._reject(item, err)
                continue
            commands.append(command)
        return commands

    def _reject(self, item: bytes, err: CommandError) -> None:
        command_id = err.args[1] if len(err.args) > 1 else uuid.uuid4().hex
        reason = str(err.args[0])
        raw = item[:200].decode("utf-8", errors="backslashreplace")
        log.warning("rejected operator command %s: %s (raw: %r)", command_id, reason, raw)
        self.record_outcome(command_id, "rejected", reason)
        entry = json.dumps({"id": command_id, "raw": raw, "reason": reason, "time": time.time()})
        self._conn.redis.lpush(self._rejected, entry)
        self._conn.redis.ltrim(self._rejected, 0, REJECTED_KEPT - 1)

    def record_outcome(self, command_id: str, status: str, reason: str = "") -> None:
        """The driver's answer to a command: done, rejected (bad input, with the reason) or failed."""
        if status not in COMMAND_OUTCOMES:
            raise ValueError(f"command outcome must be one of {list(COMMAND_OUTCOMES)}, got {status!r}")
        outcome = {"id": command_id, "status": status, "reason": reason, "time": time.time()}
        self._conn.redis.hset(self._outcomes, command_id, json.dumps(outcome))

    def outcome(self, command_id: str) -> dict[str, Any] | None:
        """{"id", "status", "reason", "time"}, or None while the command waits."""
        raw = self._conn.redis.hget(self._outcomes, command_id)
        return None if raw is None else json.loads(raw)

    def wait_for_outcome(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        """Poll for the command's outcome; TimeoutError when the driver has not answered in `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (outcome := self.outcome(command_id)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no outcome for command {command_id} after {timeout_s:g} s: the job may be busy (a long "
                    "step), paused or gone; see `flexgrpo status`"
                )
            time.sleep(0.1)
        return outcome

    def rejected(self) -> list[dict[str, Any]]:
        """The last REJECTED_KEPT rejected commands, newest first: {id, raw, reason, time}."""
        return [json.loads(r) for r in self._conn.redis.lrange(self._rejected, 0, -1)]


def _parse_command(item: bytes) -> Command:
    """A command list entry -> Command; CommandError(reason[, id]) when it is not a valid command."""
    try:
        data = json.loads(item.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CommandError(f"not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise CommandError(f"not JSON ({err})") from None
    if not isinstance(data, dict):
        raise CommandError(f"not a JSON object with op and args, got {type(data).__name__}")
    command_id = data.get("id") if isinstance(data.get("id"), str) and data.get("id") else uuid.uuid4().hex
    if data.get("op") not in COMMAND_OPS:
        raise CommandError(f"op must be one of {list(COMMAND_OPS)}, got {data.get('op')!r}", command_id)
    if not isinstance(data.get("args", {}), dict):
        raise CommandError(f"args must be a JSON object, got {type(data['args']).__name__}", command_id)
    return Command(command_id, data["op"], data.get("args", {}))
