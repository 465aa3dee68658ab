"""The ledger's settle and audit, both by replaying the transition log (not trusting the state hash).

`settle` folds away the groups whose story ended before a step no resume goes back to: their records and log
events leave Redis, their verdicts stay as counts in R:settled and R:settled_twice, their ids in R:settled_ids
(see keys.py). `audit` counts every group, settled or not, against the weights of a final step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection
from flexgrpo.control_plane.ledger import Ledger, run_ledger_script

# Fold settled groups away. KEYS: groups hash, transition log, settled hash, settled_twice set, settled ids set.
# ARGV: before step, JSON [[group, [fields to count]]], JSON [log entry ids]. A group counts only when its entry
# is deleted here, so a retry after a lost reply counts nothing twice.
_SETTLE = """
local verdicts, ids = cjson.decode(ARGV[2]), cjson.decode(ARGV[3])
local settled = 0
for _, item in ipairs(verdicts) do
  if redis.call('HDEL', KEYS[1], item[1]) == 1 then
    settled = settled + 1
    redis.call('HINCRBY', KEYS[3], 'groups', 1)
    redis.call('SADD', KEYS[5], item[1])
    for _, f in ipairs(item[2]) do
      if f == 'twice' then redis.call('SADD', KEYS[4], item[1]) else redis.call('HINCRBY', KEYS[3], f, 1) end
    end
  end
end
for i = 1, #ids, 1000 do
  redis.call('XDEL', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
local before = tonumber(redis.call('HGET', KEYS[3], 'before') or '0')
redis.call('HSET', KEYS[3], 'before', math.max(before, tonumber(ARGV[1])))
return settled
"""


@dataclass
class AuditReport:
    trained: int  # groups with one or more trainings that survive in the final weights
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> groups
    lost: list[str] = field(default_factory=list)  # neither surviving training nor dropped, in a finished run
    pending: list[str] = field(default_factory=list)  # admitted, not trained yet, in a run that will resume
    trained_twice: list[str] = field(default_factory=list)  # more than one surviving training
    settled: int = 0  # of all these, groups folded away by `ledger_settle` (counted, records gone)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.trained_twice


class LedgerAudit:
    """The settle and the audit of one run's ledger."""

    def __init__(self, connection: Connection, ledger: Ledger) -> None:
        self._conn, self._ledger, run = connection, ledger, connection.run
        self._settle = connection.script(_SETTLE)
        self._settle_keys = [keys.groups(run), keys.ledger_log(run)]
        self._settle_keys += [keys.settled(run), keys.settled_twice(run), keys.settled_ids(run)]

    def settle(self, before_step: int) -> int:
        """Fold away the groups whose story ended before `before_step`: trained at a step < before_step, or
        dropped, with no surviving training at a later step. Their records and log events leave Redis; their
        verdicts (trained, dropped by reason, trained twice) are added to the run's settled counts, which
        `audit` adds in, and their ids stay in a set (tens of bytes each, against ~1 kB) so that none is ever
        queued again. Only for a step no resume goes back before: at most the oldest kept checkpoint's.
        -> how many groups were settled"""
        entries = self._ledger.entries()
        surviving = _surviving(event for _, event in entries)
        verdicts: dict[str, list[str]] = {}
        for group, record in self._ledger.states().items():
            kept = surviving.get(group, [])
            over = (
                record["state"] == "dropped" or record["state"] == "trained" and record["step"] < before_step and kept
            )
            if over and all(s < before_step for s in kept):  # (a trained record the log does not back stays: lost)
                verdicts[group] = _verdict(record, kept)
        if not verdicts:
            return 0
        ids = [entry_id for entry_id, event in entries if event["group"] in verdicts]
        args = [before_step, json.dumps(list(verdicts.items())), json.dumps(ids)]
        return run_ledger_script(self._conn, self._settle, self._settle_keys, args)

    def audit(self, final_step: int, *, finished: bool = True) -> AuditReport:
        """Replay the transition log (not trusting the state hash) against the weights of `final_step` (the
        number of steps in them): trainings at steps >= final_step, or undone by a rollback, do not survive.
        A group neither trained nor dropped is lost in a finished run, and pending in one that stopped (its
        resume queues it again). Settled groups count with the verdicts `settle` recorded (final_step is
        past its step, as every resume is)."""
        surviving = _surviving(self._ledger.log())
        settled = self._conn.redis.hgetall(keys.settled(self._conn.run))
        report = AuditReport(
            trained=int(settled.get("trained", 0)),
            dropped={k.removeprefix("dropped:"): int(v) for k, v in settled.items() if k.startswith("dropped:")},
            trained_twice=sorted(self._conn.redis.smembers(keys.settled_twice(self._conn.run))),
            settled=int(settled.get("groups", 0)),
        )
        for group, record in sorted(self._ledger.states().items()):
            verdict = _verdict(record, [s for s in surviving.get(group, []) if s < final_step])
            if not verdict:
                (report.lost if finished else report.pending).append(group)
            for what in verdict:
                if what == "trained":
                    report.trained += 1
                elif what == "twice":
                    report.trained_twice.append(group)
                else:
                    reason = what.removeprefix("dropped:")
                    report.dropped[reason] = report.dropped.get(reason, 0) + 1
        report.trained_twice.sort()
        return report


def _surviving(events: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """group -> the steps of its trainings that no later rollback undid, from the transition log."""
    surviving: dict[str, list[int]] = {}
    for event in events:
        group = event["group"]
        if event["to"] == "trained":
            surviving.setdefault(group, []).append(event["step"])
        elif "rollback_to" in event:
            surviving[group] = [s for s in surviving.get(group, []) if s < event["rollback_to"]]
    return surviving


def _verdict(record: dict[str, Any], kept: list[int]) -> list[str]:
    """What the audit counts of a group with this ledger record and these surviving trainings: "trained" (one
    survives), "twice" (more than one), "dropped:<reason>"; nothing for a lost or pending group. The names are
    those of the settled counts."""
    dropped = [f"dropped:{record['reason']}"] if record["state"] == "dropped" else []
    return ["trained"] * bool(kept) + ["twice"] * (len(kept) > 1) + dropped
