"""Who owns a run: one live owner per run, held by a lease with a TTL that the owning job renews.

Keys (see keys.py): R:lease (the owner's JSON, with the TTL), and lease_owner, lease_renewed_at in the run hash.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flexgrpo.control_plane import keys
from flexgrpo.control_plane.connection import Connection

# KEYS: lease key, run hash. ARGV: owner JSON, ttl ms, now. Returns {1} when held by this owner now,
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

# KEYS: lease key. ARGV: owner JSON. Deletes the lease only when this owner holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RunOwnedError(RuntimeError):
    """The run is owned by another live job; the one-line message names its host and pid."""


def ago(t: float | None) -> str:
    """How long ago unix time `t` was, and when, for a one-line message."""
    if t is None:
        return "never"
    return f"{time.time() - t:.1f} s ago, at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}"


class Lease:
    """The lease of one run."""

    def __init__(self, connection: Connection) -> None:
        self._conn, self.run = connection, connection.run
        self._key, self._run_key = keys.lease(self.run), keys.run(self.run)
        self._acquire, self._release = connection.script(_ACQUIRE), connection.script(_RELEASE)

    def acquire(self, owner: dict[str, Any], ttl_s: float) -> None:
        """Own the run for `ttl_s` seconds; take over an expired lease; RunOwnedError if another owner's is live."""
        held = self._conn.run_script(
            self._acquire,
            [self._key, self._run_key],
            [json.dumps(owner, sort_keys=True), max(1, int(ttl_s * 1000)), time.time()],
        )
        if held[0] != 1:
            other, ttl_ms, renewed = json.loads(held[1]), int(held[2]), held[3]
            raise RunOwnedError(
                f"run {self.run!r} is owned by pid {other.get('pid')} on host {other.get('host')} "
                f"(lease renewed {ago(float(renewed)) if renewed else 'at an unknown time'}; "
                f"it expires in {max(0, ttl_ms) / 1000:.0f} s unless renewed): stop that job first"
            )

    def release(self, owner: dict[str, Any], outage_timeout_s: float = 5.0) -> None:
        """Give the lease up, only if `owner` holds it. Waits out an outage only briefly: an exiting job must not
        hang on it, and the lease expires by itself."""
        self._conn.run_script(self._release, [self._key], [json.dumps(owner, sort_keys=True)], outage_timeout_s)

    def current(self) -> dict[str, Any] | None:
        """The live lease: {"owner": {...}, "ttl_s": remaining seconds}, or None when no owner is live."""
        raw, ttl_ms = self._conn.redis.get(self._key), self._conn.redis.pttl(self._key)
        if raw is None or ttl_ms == -2:
            return None
        return {"owner": json.loads(raw), "ttl_s": round(max(0, ttl_ms) / 1000, 1)}
