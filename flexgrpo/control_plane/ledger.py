"""The ledger: every group's life, the source of truth for exactly-once training.

A group goes queued -> sampled(worker, policy_version) -> scored(reward_version) -> trained(step), or to
dropped(reason) from any state before trained; each transition is one atomic Lua script that updates the record
in R:groups and appends the event to R:ledger_log (see keys.py). A learner step commits its groups together with
the run's step (`commit_step`); a resume rolls the ledger back to its checkpoint (`rollback`). The settle and the
audit, which replay the log, are in ledger_audit.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.commands.core import Script

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection

LEDGER_STATES = ("queued", "sampled", "scored", "trained", "dropped")


class LedgerError(ValueError):
    """A ledger transition that the state machine forbids (e.g. trained -> sampled); the message names it."""


# Ledger transitions, atomic in Lua. KEYS: groups hash, transition log, run hash, settled ids set.
# ARGV: target state, JSON of the target's fields, now, group ids...
_TRANSITION = """
local target, fields, now = ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3])
local allowed = {sampled = {queued = true, sampled = true, scored = true}, scored = {sampled = true, scored = true},
                 dropped = {queued = true, sampled = true, scored = true}}
local todo = {}
for i = 4, #ARGV do
  local g = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], g)
  local rec = raw and cjson.decode(raw) or nil
  if rec == nil and redis.call('SISMEMBER', KEYS[4], g) == 1 then
    return redis.error_reply('ledger: group ' .. g .. ' was settled (its story ended before a kept checkpoint), ' ..
      'it cannot become ' .. target)
  end
  local same = rec ~= nil and rec.state == target
  if same then for k, v in pairs(fields) do if rec[k] ~= v then same = false end end end
  if not same then
    if target == 'queued' then
      if rec ~= nil then
        return redis.error_reply('ledger: group ' .. g .. ' is already ' .. rec.state .. ', cannot queue it again')
      end
    elseif rec == nil then
      return redis.error_reply('ledger: group ' .. g .. ' is not in the ledger: queue it first')
    elseif not allowed[target][rec.state] then
      local from = {}
      for s, _ in pairs(allowed[target]) do table.insert(from, s) end
      table.sort(from)
      return redis.error_reply('ledger: group ' .. g .. ' cannot become ' .. target .. ' from ' .. rec.state ..
        ' (only from ' .. table.concat(from, ', ') .. ')')
    end
    table.insert(todo, {g, rec or {}})
  end
end
for _, item in ipairs(todo) do
  local g, rec = item[1], item[2]
  local from = rec.state or 'new'
  rec.state = target
  local event = {group = g, from = from, to = target, time = now}
  for k, v in pairs(fields) do rec[k] = v; event[k] = v end
  redis.call('HSET', KEYS[1], g, cjson.encode(rec))
  redis.call('XADD', KEYS[2], '*', 'e', cjson.encode(event))
end
return #todo
"""

# ARGV: step, now, group ids... Every group scored -> trained(step), and the run's step = step + 1, together.
_COMMIT = """
local step, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local todo = {}
for i = 3, #ARGV do
  local g = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], g)
  if not raw and redis.call('SISMEMBER', KEYS[4], g) == 1 then
    return redis.error_reply('ledger: group ' .. g .. ' was settled (its story ended before a kept checkpoint), ' ..
      'it cannot be trained at step ' .. step)
  end
  if not raw then return redis.error_reply('ledger: group ' .. g .. ' is not in the ledger: queue it first') end
  local rec = cjson.decode(raw)
  if rec.state == 'trained' and rec.step == step then
    -- already committed by this very call (a retry after a lost reply)
  elseif rec.state ~= 'scored' then
    local at = rec.state == 'trained' and (' at step ' .. rec.step) or ''
    return redis.error_reply('ledger: group ' .. g .. ' cannot be trained at step ' .. step .. ': it is ' ..
      rec.state .. at .. ' (only scored groups can be trained)')
  else
    table.insert(todo, {g, rec})
  end
end
for _, item in ipairs(todo) do
  local g, rec = item[1], item[2]
  rec.state = 'trained'
  rec.step = step
  redis.call('HSET', KEYS[1], g, cjson.encode(rec))
  redis.call('XADD', KEYS[2], '*', 'e', cjson.encode({group = g, from = 'scored', to = 'trained', step = step,
                                                       time = now}))
end
redis.call('HSET', KEYS[3], 'step', step + 1, 'updated_at', ARGV[2])
return #todo
"""

# ARGV: to_step, now. Trained groups with step >= to_step and every non-terminal group -> queued; returns them.
_ROLLBACK = """
local to_step, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local back = {}
for i = 1, #all, 2 do
  local g, rec = all[i], cjson.decode(all[i + 1])
  local undo = (rec.state == 'trained' and rec.step >= to_step)
  if undo or rec.state == 'sampled' or rec.state == 'scored' then
    local event = {group = g, from = rec.state, to = 'queued', rollback_to = to_step, time = now}
    if undo then event.step = rec.step end
    redis.call('HSET', KEYS[1], g, cjson.encode({state = 'queued'}))
    redis.call('XADD', KEYS[2], '*', 'e', cjson.encode(event))
  end
  if undo or rec.state ~= 'trained' and rec.state ~= 'dropped' then table.insert(back, g) end
end
redis.call('HSET', KEYS[3], 'step', to_step, 'updated_at', ARGV[2])
return back
"""


def run_ledger_script(connection: Connection, script: Script, script_keys: list[str], args: list[Any]) -> Any:
    """Run a ledger script; its "ledger: ..." error replies become LedgerError."""
    try:
        return connection.run_script(script, script_keys, args)
    except redis.ResponseError as err:
        if str(err).startswith("ledger:"):
            raise LedgerError(str(err).removeprefix("ledger: ")) from None
        raise


class Ledger:
    """The ledger of one run."""

    def __init__(self, connection: Connection) -> None:
        self._conn, run = connection, connection.run
        self._keys = [keys.groups(run), keys.ledger_log(run), keys.run(run), keys.settled_ids(run)]
        self._transition_script = connection.script(_TRANSITION)
        self._commit, self._rollback = connection.script(_COMMIT), connection.script(_ROLLBACK)

    def _transition(self, target: str, group_ids: list[str], fields: dict[str, Any]) -> None:
        if group_ids:
            args = [target, json.dumps(fields), time.time(), *group_ids]
            run_ledger_script(self._conn, self._transition_script, self._keys, args)

    def queue(self, group_ids: list[str]) -> None:
        """New groups -> queued (queueing a queued group again is a no-op; any other state is a LedgerError)."""
        self._transition("queued", group_ids, {})

    def sampled(self, group_id: str, worker: str, policy_version: int) -> None:
        """queued (or sampled, re-sampled after a worker death; or scored, re-sampled after its trajectory died
        with a node before training) -> sampled by `worker` at `policy_version`."""
        self._transition("sampled", [group_id], {"worker": worker, "policy_version": policy_version})

    def scored(self, group_id: str, reward_version: int) -> None:
        """sampled (or scored, re-scored) -> scored with `reward_version`."""
        self._transition("scored", [group_id], {"reward_version": reward_version})

    def dropped(self, group_id: str, reason: str) -> None:
        """queued, sampled or scored -> dropped(reason), terminal."""
        self._transition("dropped", [group_id], {"reason": reason})

    def commit_step(self, step: int, group_ids: list[str]) -> None:
        """Learner step `step` (0-based) trained these scored groups: all become trained(step) and the registry's
        `step` becomes step + 1 (steps committed, the next step to train), in one atomic script."""
        run_ledger_script(self._conn, self._commit, self._keys, [step, time.time(), *group_ids])

    def rollback(self, to_step: int) -> list[str]:
        """A resume from a checkpoint whose next step is `to_step`: groups trained at steps >= to_step and every
        group not in a terminal state go back to queued (logged, so an audit knows those trainings did not
        survive), the registry's `step` becomes to_step. Returns those group ids, sorted."""
        return sorted(run_ledger_script(self._conn, self._rollback, self._keys, [to_step, time.time()]))

    def states(self) -> dict[str, dict[str, Any]]:
        """group id -> {"state", and the fields of its transitions: worker, policy_version, reward_version,
        step, reason}; settled groups are no longer here."""
        return {g: json.loads(v) for g, v in self._conn.redis.hgetall(keys.groups(self._conn.run)).items()}

    def log(self) -> list[dict[str, Any]]:
        """Every transition recorded, oldest first, but those of settled groups: {group, from, to, time, and
        the target's fields; rollback_to on a rollback}."""
        return [event for _, event in self.entries()]

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """The log as (stream entry id, event), oldest first, read in batches."""
        entries, start = [], "-"
        while True:
            batch = self._conn.redis.xrange(keys.ledger_log(self._conn.run), start, "+", count=10_000)
            entries += [(entry_id, json.loads(fields["e"])) for entry_id, fields in batch]
            if len(batch) < 10_000:
                return entries
            start = "(" + batch[-1][0]
