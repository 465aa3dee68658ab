"""The Redis connection of a run's control plane, and how it waits out an outage.

Every Redis call goes through one retry wrapper: a Redis outage is waited out with backoff (and `on_outage`
called, e.g. to restart the embedded server) for up to `outage_timeout_s`, then `ControlPlaneUnavailable`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

log = logging.getLogger("flexgrpo.control_plane")

OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is a ConnectionError
T = TypeVar("T")


class ControlPlaneUnavailable(RuntimeError):
    """Redis stayed unreachable for longer than the outage timeout."""


class _Retrying:
    """A redis client whose every method call goes through `retry`."""

    def __init__(self, client: redis.Redis, retry: Callable[..., Any]) -> None:
        self._client, self._retry = client, retry

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._retry(method, *args, **kwargs)


def client(url: str, *, decode: bool, timeout_s: float | None = 30.0) -> redis.Redis:
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


class Connection:
    """The clients of one run's control plane: `redis` decodes replies to str, `raw` keeps bytes (what an
    operator pushed, undecoded); every call on either, and every script run, waits out an outage."""

    def __init__(self, url: str, run: str, on_outage: Callable[[], None] | None, outage_timeout_s: float) -> None:
        self.run, self.url = run, url  # the url carries the password: never log it (log `address`)
        self.address = _address(url)
        self.on_outage = on_outage
        self.outage_timeout_s = outage_timeout_s
        self._outage_lock = threading.Lock()
        self._recovered_at = 0.0  # monotonic time the last on_outage call returned
        self._text = client(url, decode=True)
        self.redis = _Retrying(self._text, self.retry)
        self.raw = _Retrying(client(url, decode=False), self.retry)

    def script(self, source: str) -> Script:
        """A Lua script of this connection, to run with `run_script`."""
        return self._text.register_script(source)

    def run_script(self, script: Script, keys: list[str], args: list[Any], outage_timeout_s: float | None = None):
        """Run `script` atomically, waiting out an outage (for `outage_timeout_s`, default the connection's)."""
        return self.retry(script, keys=keys, args=args, outage_timeout_s=outage_timeout_s)

    def retry(self, fn: Callable[..., T], *args: Any, outage_timeout_s: float | None = None, **kwargs: Any) -> T:
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
