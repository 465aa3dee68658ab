"""Every Redis key of the control plane, named here and nowhere else.

All values are JSON or plain strings, never pickle; bulk data never goes into Redis. Every key but the first is
of one run: R stands for `flexgrpo:run:<run name>`.

| key                 | type         | what it holds                                             | written by          |
|---------------------|--------------|-----------------------------------------------------------|---------------------|
| flexgrpo:runs       | set          | run names                                                 | registry            |
| R                   | hash         | config, status, step, policy_version, reward_version,     | registry; step also |
|                     |              | pools, rewards, updated_at; lease_owner, lease_renewed_at | ledger, lease       |
| R:lease             | string + TTL | JSON of the live owner (one owner per run)                | lease               |
| R:heartbeats        | hash         | worker name -> JSON {time, pid, host}                     | heartbeats, workers |
| R:groups            | hash         | group id -> JSON {state, worker, policy_version,          | ledger; deleted by  |
|                     |              | reward_version, step, reason}: the ledger, the source of  | ledger_audit        |
|                     |              | truth for exactly-once training                           | (settle)            |
| R:ledger_log        | stream       | every ledger transition (JSON in field "e")               | ledger; same        |
| R:settled           | hash         | verdicts of settled groups: before (step), groups,        | ledger_audit        |
|                     |              | trained, dropped:<reason> (counts)                        |                     |
| R:settled_twice     | set          | settled groups with more than one surviving training      | ledger_audit        |
| R:settled_ids       | set          | every settled group id (it can never be queued again)     | ledger_audit        |
| R:commands          | list         | operator commands, JSON {id, op, args}, consumed in order | commands (operator) |
| R:command_outcomes  | hash         | command id -> JSON {id, status, reason, time}             | commands (driver)   |
| R:rejected_commands | list         | newest first, at most REJECTED_KEPT: JSON {id, raw,       | commands (driver)   |
|                     |              | reason, time}                                             |                     |
| R:metrics           | stream       | per-step metrics (JSON in field "m")                      | metrics_stream      |

"Written by" names the module of this package that owns the key.
"""

from __future__ import annotations

RUNS = "flexgrpo:runs"
RUN_PREFIX = "flexgrpo:run:"


def run(name: str) -> str:
    return f"{RUN_PREFIX}{name}"


def lease(name: str) -> str:
    return f"{run(name)}:lease"


def heartbeats(name: str) -> str:
    return f"{run(name)}:heartbeats"


def groups(name: str) -> str:
    return f"{run(name)}:groups"


def ledger_log(name: str) -> str:
    return f"{run(name)}:ledger_log"


def settled(name: str) -> str:
    return f"{run(name)}:settled"


def settled_twice(name: str) -> str:
    return f"{run(name)}:settled_twice"


def settled_ids(name: str) -> str:
    return f"{run(name)}:settled_ids"


def commands(name: str) -> str:
    return f"{run(name)}:commands"


def command_outcomes(name: str) -> str:
    return f"{run(name)}:command_outcomes"


def rejected_commands(name: str) -> str:
    return f"{run(name)}:rejected_commands"


def metrics(name: str) -> str:
    return f"{run(name)}:metrics"
