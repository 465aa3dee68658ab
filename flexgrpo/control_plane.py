"""The Redis control plane: what must outlive any process, and what an operator talks to.

Keys of run R (all JSON or plain strings, never pickle; bulk data never goes here):
  flexgrpo:runs                      set of run names
  flexgrpo:run:R                     hash: config, status, step, policy_version, reward_version, updated_at,
                                     lease_owner, lease_renewed_at
  flexgrpo:run:R:lease               string with a TTL: JSON of the live owner (one owner per run)
  flexgrpo:run:R:heartbeats          hash: worker name -> JSON {time, pid, host}, written by the workers
  flexgrpo:run:R:groups              hash: group id -> JSON {state, worker, policy_version, reward_version, step,
                                     reason}: the ledger, the source of truth for exactly-once training
  flexgrpo:run:R:ledger_log          stream: every ledger transition (JSON in field "e"), append-only
  flexgrpo:run:R:settled             hash: the verdicts of groups folded away by `ledger_settle`: before (step),
                                     groups, trained, dropped:<reason> (counts)
  flexgrpo:run:R:settled_twice       set: settled groups whose log showed more than one surviving training
  flexgrpo:run:R:settled_ids         set: every settled group id (a settled group can never be queued again)
  flexgrpo:run:R:commands            list of operator commands (JSON {id, op, args}), consumed in order
  flexgrpo:run:R:command_outcomes    hash: command id -> JSON {id, status, reason, time}
  flexgrpo:run:R:rejected_commands   list, newest first, at most REJECTED_KEPT: JSON {id, raw, reason, time}
  flexgrpo:run:R:metrics             stream of per-step metrics (JSON in field "m")

Every Redis call goes through one retry wrapper: a Redis outage is waited out with backoff (and `on_outage`
called, e.g. to restart the embedded server) for up to `outage_timeout_s`, then `ControlPlaneUnavailable`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("flexgrpo.control_plane")

COMMAND_OPS = ("checkpoint", "pause", "resume", "stop", "swap_reward")
COMMAND_OUTCOMES = ("done", "rejected", "failed")
LEDGER_STATES = ("queued", "sampled", "scored", "trained", "dropped")
LIVE_STATUSES = ("starting", "running", "paused")  # statuses that need a live lease to be true
REJECTED_KEPT = 20
JSON_FIELDS = ("pools", "rewards")  # run fields that hold JSON objects (per-pool figures, the reward spec)
STATUS_FILE = "status.json"
OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is a ConnectionError
T = TypeVar("T")


class CommandError(ValueError):
    """An operator command that cannot be carried out; the message says why."""


class LedgerError(ValueError):
    """A ledger transition that the state machine forbids (e.g. trained -> sampled); the message names it."""


class RunOwnedError(RuntimeError):
    """The run is owned by another live job; the one-line message names its host and pid."""


class ControlPlaneUnavailable(RuntimeError):
    """Redis stayed unreachable for longer than the outage timeout."""


@dataclass(frozen=True)
class Command:
    id: str  # uuid4 hex, the key of its outcome
    op: str  # one of COMMAND_OPS
    args: dict[str, Any]  # swap_reward: {"rewards": [RewardSpec as dict, ...]}


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


class _Retrying:
    """A redis client whose every method call goes through `retry`."""

    def __init__(self, client: redis.Redis, retry: Callable[..., Any]) -> None:
        self._client, self._retry = client, retry

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._retry(method, *args, **kwargs)


def _client(url: str, *, decode: bool, timeout_s: float | None = 30.0) -> redis.Redis:
    """A client without redis-py's own retries (ours wrap every call), with bounded socket waits."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=5,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _address(url: str) -> str:
    """host:port of a Redis URL, without its password."""
    kwargs = redis.connection.parse_url(url)
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    return f"{time.time() - t:.1f} s ago, at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}"


# Ledger transitions, atomic in Lua. KEYS: groups hash, transition log, run hash, settled ids set.
# ARGV: target state, JSON of the target's fields, now, group ids...
_TRANSITION = """
local target, fields, now = ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3])
local allowed = {sampled = {queued = true, sampled = true}, scored = {sampled = true, scored = true},
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

# The lease. KEYS: lease key, run hash. ARGV: owner JSON, ttl ms, now. Returns {1} when held by this owner now,
# else {0, owner JSON, remaining ms, last renewal}.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return {0, cur, redis.call('PTTL', KEYS[1]), redis.call('HGET', KEYS[2], 'lease_renewed_at') or ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'lease_owner', ARGV[1], 'lease_renewed_at', ARGV[3])
return {1}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ControlPlane:
    """A run's control plane in Redis. Every call waits out an outage (see the module docstring)."""

    def __init__(
        self,
        url: str,
        run: str,
        *,
        on_outage: Callable[[], None] | None = None,
        outage_timeout_s: float = 600.0,
    ) -> None:
        self.run, self.url = run, url  # the url carries the password: never log it (log `address`)
        self.address = _address(url)
        self.on_outage = on_outage
        self.outage_timeout_s = outage_timeout_s
        self._outage_lock = threading.Lock()
        self._recovered_at = 0.0  # monotonic time the last on_outage call returned
        text, raw = _client(url, decode=True), _client(url, decode=False)
        self.redis = _Retrying(text, self._retry)  # decodes replies to str
        self._raw = _Retrying(raw, self._retry)  # bytes: what an operator pushed, undecoded
        self._scripts = {
            name: text.register_script(source)
            for name, source in [
                ("transition", _TRANSITION),
                ("commit", _COMMIT),
                ("rollback", _ROLLBACK),
                ("settle", _SETTLE),
                ("acquire", _ACQUIRE),
                ("release", _RELEASE),
            ]
        }
        self._key = f"flexgrpo:run:{run}"

    # ---- resilience -----------------------------------------------------------------------------------

    def _retry(self, fn: Callable[..., T], *args: Any, outage_timeout_s: float | None = None, **kwargs: Any) -> T:
        """Call `fn`; on a connection error, timeout or loading server: log once, call `on_outage`, back off
        0.1 s doubling to 5 s, give up after `outage_timeout_s` (default: the constructor's) with
        ControlPlaneUnavailable."""
        limit = self.outage_timeout_s if outage_timeout_s is None else outage_timeout_s
        start, delay, failed, outage_handled = time.monotonic(), 0.1, False, False
        while True:
            try:
                result = fn(*args, **kwargs)
            except redis.AuthenticationError:
                raise
            except OUTAGE_ERRORS as err:
                waited = time.monotonic() - start
                if waited >= limit:
                    raise ControlPlaneUnavailable(
                        f"Redis at {self.address} unreachable for {waited:.0f} s (run {self.run!r}): {err}"
                    ) from None
                if not failed:
                    log.warning("Redis at %s unreachable (%s): waiting up to %.0f s", self.address, err, limit)
                    failed = True
                if not outage_handled:
                    outage_handled = self._handle_outage(start)
                time.sleep(min(delay, max(0.0, limit - waited)))
                delay = min(delay * 2, 5.0)
                continue
            if failed:
                log.warning("Redis at %s is back after %.1f s", self.address, time.monotonic() - start)
            return result

    def _handle_outage(self, failed_at: float) -> bool:
        """Run `on_outage` once per outage, one thread at a time, not again for a failure that began before the
        last recovery (two threads hit by one outage restart the server once); False when it failed, so that it
        is tried again."""
        if self.on_outage is None:
            return True
        if not self._outage_lock.acquire(blocking=False):
            return True  # another thread is handling it
        try:
            if self._recovered_at < failed_at:
                self.on_outage()
                self._recovered_at = time.monotonic()
            return True
        except Exception:  # noqa: BLE001  (a failed restart is retried at the next attempt)
            log.exception("on_outage failed; retrying")
            return False
        finally:
            self._outage_lock.release()

    def _script(self, name: str, keys: list[str], args: list[Any], outage_timeout_s: float | None = None) -> Any:
        try:
            return self._retry(self._scripts[name], keys=keys, args=args, outage_timeout_s=outage_timeout_s)
        except redis.ResponseError as err:
            if str(err).startswith("ledger:"):
                raise LedgerError(str(err).removeprefix("ledger: ")) from None
            raise

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
        """The registry hash as stored (its `status` is what the driver wrote; see `status()`)."""
        return self.redis.hgetall(self._key)

    def status(self) -> dict[str, Any]:
        """What `flexgrpo status` shows: the registry (without the config) with `status` "lost" when it claims a
        live job but no lease is live, the lease, the workers' heartbeats and the last rejected commands."""
        info: dict[str, Any] = {k: v for k, v in self.run_info().items() if k not in ("config", "lease_owner")}
        for key in JSON_FIELDS:  # stored as JSON by `update_run`: shown as the objects they are
            if key in info:
                info[key] = json.loads(info[key])
        lease = self.lease()
        renewed = info.pop("lease_renewed_at", None)
        if info.get("status") in LIVE_STATUSES and lease is None:
            info["status"] = "lost"
            info["last_beat"] = _ago(float(renewed)) if renewed else "never (no lease was ever taken)"
        return info | {
            "run": self.run,
            "lease": lease,
            "heartbeats": self.heartbeats(),
            "rejected_commands": self.rejected_commands(),
        }

    # ---- lease: one owner per run ---------------------------------------------------------------------

    def acquire_lease(self, owner: dict[str, Any], ttl_s: float) -> None:
        """Own the run for `ttl_s` seconds; take over an expired lease; RunOwnedError if another owner's is live."""
        held = self._script(
            "acquire",
            [f"{self._key}:lease", self._key],
            [json.dumps(owner, sort_keys=True), max(1, int(ttl_s * 1000)), time.time()],
        )
        if held[0] != 1:
            other, ttl_ms, renewed = json.loads(held[1]), int(held[2]), held[3]
            raise RunOwnedError(
                f"run {self.run!r} is owned by pid {other.get('pid')} on host {other.get('host')} "
                f"(lease renewed {_ago(float(renewed)) if renewed else 'at an unknown time'}; "
                f"it expires in {max(0, ttl_ms) / 1000:.0f} s unless renewed): stop that job first"
            )

    def renew_lease(self, owner: dict[str, Any], ttl_s: float) -> None:
        """Extend this owner's lease (re-taking it if it expired and nobody took over); RunOwnedError otherwise."""
        self.acquire_lease(owner, ttl_s)

    def release_lease(self, owner: dict[str, Any], outage_timeout_s: float = 5.0) -> None:
        """Give the lease up, only if `owner` holds it. Waits out an outage only briefly: an exiting job must not
        hang on it, and the lease expires by itself."""
        self._script("release", [f"{self._key}:lease"], [json.dumps(owner, sort_keys=True)], outage_timeout_s)

    def lease(self) -> dict[str, Any] | None:
        """The live lease: {"owner": {...}, "ttl_s": remaining seconds}, or None when no owner is live."""
        raw, ttl_ms = self.redis.get(f"{self._key}:lease"), self.redis.pttl(f"{self._key}:lease")
        if raw is None or ttl_ms == -2:
            return None
        return {"owner": json.loads(raw), "ttl_s": round(max(0, ttl_ms) / 1000, 1)}

    # ---- workers --------------------------------------------------------------------------------------

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """Each worker's last beat: {"pid", "host", "age_s"} (pid and host None for beats the driver wrote)."""
        now, beats = time.time(), {}
        for worker, value in sorted(self.redis.hgetall(f"{self._key}:heartbeats").items()):
            beat = _parse_beat(value)
            beats[worker] = {"pid": beat.get("pid"), "host": beat.get("host"), "age_s": round(now - beat["time"], 1)}
        return beats

    # ---- the ledger: every group's life, the source of truth for exactly-once training ------------------

    def _transition(self, target: str, group_ids: list[str], fields: dict[str, Any]) -> None:
        if group_ids:
            keys = self._ledger_keys()
            self._script("transition", keys, [target, json.dumps(fields), time.time(), *group_ids])

    def _ledger_keys(self) -> list[str]:
        return [f"{self._key}:groups", f"{self._key}:ledger_log", self._key, f"{self._key}:settled_ids"]

    def ledger_queue(self, group_ids: list[str]) -> None:
        """New groups -> queued (queueing a queued group again is a no-op; any other state is a LedgerError)."""
        self._transition("queued", group_ids, {})

    def ledger_sampled(self, group_id: str, worker: str, policy_version: int) -> None:
        """queued (or sampled, re-sampled after a worker death) -> sampled by `worker` at `policy_version`."""
        self._transition("sampled", [group_id], {"worker": worker, "policy_version": policy_version})

    def ledger_scored(self, group_id: str, reward_version: int) -> None:
        """sampled (or scored, re-scored) -> scored with `reward_version`."""
        self._transition("scored", [group_id], {"reward_version": reward_version})

    def ledger_dropped(self, group_id: str, reason: str) -> None:
        """queued, sampled or scored -> dropped(reason), terminal."""
        self._transition("dropped", [group_id], {"reason": reason})

    def ledger_commit_step(self, step: int, group_ids: list[str]) -> None:
        """Learner step `step` (0-based) trained these scored groups: all become trained(step) and the registry's
        `step` becomes step + 1 (steps committed, the next step to train), in one atomic script."""
        keys = self._ledger_keys()
        self._script("commit", keys, [step, time.time(), *group_ids])

    def ledger_rollback(self, to_step: int) -> list[str]:
        """A resume from a checkpoint whose next step is `to_step`: groups trained at steps >= to_step and every
        group not in a terminal state go back to queued (logged, so an audit knows those trainings did not
        survive), the registry's `step` becomes to_step. Returns those group ids, sorted."""
        keys = self._ledger_keys()
        return sorted(self._script("rollback", keys, [to_step, time.time()]))

    def ledger_states(self) -> dict[str, dict[str, Any]]:
        """group id -> {"state", and the fields of its transitions: worker, policy_version, reward_version,
        step, reason}; settled groups are no longer here."""
        return {g: json.loads(v) for g, v in self.redis.hgetall(f"{self._key}:groups").items()}

    def ledger_log(self) -> list[dict[str, Any]]:
        """Every transition recorded, oldest first, but those of settled groups: {group, from, to, time, and
        the target's fields; rollback_to on a rollback}."""
        return [event for _, event in self._ledger_entries()]

    def _ledger_entries(self) -> list[tuple[str, dict[str, Any]]]:
        entries, start = [], "-"
        while True:
            batch = self.redis.xrange(f"{self._key}:ledger_log", start, "+", count=10_000)
            entries += [(entry_id, json.loads(fields["e"])) for entry_id, fields in batch]
            if len(batch) < 10_000:
                return entries
            start = "(" + batch[-1][0]

    def ledger_settle(self, before_step: int) -> int:
        """Fold away the groups whose story ended before `before_step`: trained at a step < before_step, or
        dropped, with no surviving training at a later step. Their records and log events leave Redis; their
        verdicts (trained, dropped by reason, trained twice) are added to the run's settled counts, which
        `audit` adds in, and their ids stay in a set (tens of bytes each, against ~1 kB) so that none is ever
        queued again. Only for a step no resume goes back before: at most the oldest kept checkpoint's.
        -> how many groups were settled"""
        entries = self._ledger_entries()
        surviving = _surviving(event for _, event in entries)
        verdicts: dict[str, list[str]] = {}
        for group, record in self.ledger_states().items():
            kept = surviving.get(group, [])
            over = (
                record["state"] == "dropped" or record["state"] == "trained" and record["step"] < before_step and kept
            )
            if over and all(s < before_step for s in kept):  # (a trained record the log does not back stays: lost)
                verdicts[group] = _verdict(record, kept)
        if not verdicts:
            return 0
        ids = [entry_id for entry_id, event in entries if event["group"] in verdicts]
        keys = [f"{self._key}:{k}" for k in ("groups", "ledger_log", "settled", "settled_twice", "settled_ids")]
        return self._script("settle", keys, [before_step, json.dumps(list(verdicts.items())), json.dumps(ids)])

    def audit(self, final_step: int, *, finished: bool = True) -> AuditReport:
        """Replay the transition log (not trusting the state hash) against the weights of `final_step` (the
        number of steps in them): trainings at steps >= final_step, or undone by a rollback, do not survive.
        A group neither trained nor dropped is lost in a finished run, and pending in one that stopped (its
        resume queues it again). Settled groups count with the verdicts `ledger_settle` recorded (final_step is
        past its step, as every resume is)."""
        surviving = _surviving(self.ledger_log())
        settled = self.redis.hgetall(f"{self._key}:settled")
        report = AuditReport(
            trained=int(settled.get("trained", 0)),
            dropped={k.removeprefix("dropped:"): int(v) for k, v in settled.items() if k.startswith("dropped:")},
            trained_twice=sorted(self.redis.smembers(f"{self._key}:settled_twice")),
            settled=int(settled.get("groups", 0)),
        )
        for group, record in sorted(self.ledger_states().items()):
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

    # ---- commands -------------------------------------------------------------------------------------

    def send_command(self, op: str, **args: Any) -> str:
        """Queue an operator command; returns its id (wait for its outcome with `wait_for_outcome`)."""
        if op not in COMMAND_OPS:
            raise CommandError(f"command must be one of {list(COMMAND_OPS)}, got {op!r}")
        command_id = uuid.uuid4().hex
        self.redis.rpush(f"{self._key}:commands", json.dumps({"id": command_id, "op": op, "args": args}))
        return command_id

    def take_commands(self) -> list[Command]:
        """Pop every pending command, oldest first. An entry that is not UTF-8, not JSON, or not a known op with
        dict args is not returned: it is rejected (outcome recorded with the reason, kept in the list that
        `flexgrpo status` shows) and logged as a warning here."""
        commands = []
        for item in self._raw.lpop(f"{self._key}:commands", 1000) or []:
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
        self.redis.lpush(f"{self._key}:rejected_commands", entry)
        self.redis.ltrim(f"{self._key}:rejected_commands", 0, REJECTED_KEPT - 1)

    def record_outcome(self, command_id: str, status: str, reason: str = "") -> None:
        """The driver's answer to a command: done, rejected (bad input, with the reason) or failed."""
        if status not in COMMAND_OUTCOMES:
            raise ValueError(f"command outcome must be one of {list(COMMAND_OUTCOMES)}, got {status!r}")
        outcome = {"id": command_id, "status": status, "reason": reason, "time": time.time()}
        self.redis.hset(f"{self._key}:command_outcomes", command_id, json.dumps(outcome))

    def command_outcome(self, command_id: str) -> dict[str, Any] | None:
        """{"id", "status", "reason", "time"}, or None while the command waits."""
        raw = self.redis.hget(f"{self._key}:command_outcomes", command_id)
        return None if raw is None else json.loads(raw)

    def wait_for_outcome(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        """Poll for the command's outcome; TimeoutError when the driver has not answered in `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (outcome := self.command_outcome(command_id)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no outcome for command {command_id} after {timeout_s:g} s: the job may be busy (a long "
                    "step), paused or gone; see `flexgrpo status`"
                )
            time.sleep(0.1)
        return outcome

    def rejected_commands(self) -> list[dict[str, Any]]:
        """The last REJECTED_KEPT rejected commands, newest first: {id, raw, reason, time}."""
        return [json.loads(r) for r in self.redis.lrange(f"{self._key}:rejected_commands", 0, -1)]

    # ---- metrics --------------------------------------------------------------------------------------

    def publish_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.redis.xadd(f"{self._key}:metrics", {"m": json.dumps({"step": step} | metrics)}, maxlen=100_000)

    def read_metrics(self) -> list[dict]:
        return [json.loads(fields["m"]) for _, fields in self.redis.xrange(f"{self._key}:metrics")]

    def forget_metrics_from(self, step: int) -> int:
        """Delete the metrics of steps >= `step` (a resume redoes them); returns how many entries went."""
        doomed = [
            entry_id
            for entry_id, fields in self.redis.xrange(f"{self._key}:metrics")
            if json.loads(fields["m"])["step"] >= step
        ]
        return self.redis.xdel(f"{self._key}:metrics", *doomed) if doomed else 0


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


def _parse_beat(value: str) -> dict[str, Any]:
    """A heartbeat value: JSON {time, pid, host}, or the bare unix time older drivers wrote."""
    beat = json.loads(value)
    return beat if isinstance(beat, dict) else {"time": float(beat)}


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


class Heartbeat:
    """A worker's own heartbeat: a daemon thread writing {time, pid, host} under its name every `period_s`.
    Redis errors are swallowed (an outage must not kill a worker); the next beat tries again."""

    def __init__(self, url: str, run: str, worker_name: str, period_s: float = 2.0) -> None:
        self.key, self.worker, self.period_s = f"flexgrpo:run:{run}:heartbeats", worker_name, period_s
        self._client = _client(url, decode=True, timeout_s=max(1.0, period_s))
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{worker_name}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        while True:
            try:
                self._client.hset(self.key, self.worker, json.dumps({"time": time.time(), "pid": pid, "host": host}))
            except redis.RedisError:
                pass  # Redis down or restarting: the next beat tries again
            if self._stopped.wait(self.period_s):
                return


def write_status_file(run_dir: str | Path, status: dict[str, Any]) -> None:
    """Write RUN_DIR/status.json atomically (the driver, every step and at exit: `control.status()`, or the
    last one it had when Redis is gone) so that `flexgrpo status` works after the job's Redis is gone."""
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status | {"written_at": time.time()}, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def read_status_file(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN_DIR/status.json as a dict; None when it is missing or unreadable."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
