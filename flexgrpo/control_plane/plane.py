"""ControlPlane: the one object a role holds for its run's control plane. It composes the concerns (each owns
its keys and the operations on them, see the package docstring) and keeps the flat method names the roles call;
a method here only forwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flexgrpo.control_plane.commands import Command, Commands
from flexgrpo.control_plane.connection import Connection
from flexgrpo.control_plane.heartbeats import read_heartbeats
from flexgrpo.control_plane.lease import Lease
from flexgrpo.control_plane.ledger import Ledger
from flexgrpo.control_plane.ledger_audit import AuditReport, LedgerAudit
from flexgrpo.control_plane.metrics_stream import MetricsStream
from flexgrpo.control_plane.registry import RunRegistry


class ControlPlane:
    """A run's control plane in Redis. Every call waits out an outage (see connection.py)."""

    def __init__(
        self,
        url: str,
        run: str,
        *,
        on_outage: Callable[[], None] | None = None,
        outage_timeout_s: float = 600.0,
    ) -> None:
        self.connection = Connection(url, run, on_outage, outage_timeout_s)
        self.run, self.url, self.address = run, url, self.connection.address  # log `address`, never the url
        self.redis = self.connection.redis  # decodes replies to str
        self.registry = RunRegistry(self.connection)
        self.ownership = Lease(self.connection)
        self.ledger = Ledger(self.connection)
        self.ledger_audit = LedgerAudit(self.connection, self.ledger)
        self.commands = Commands(self.connection)
        self.metrics = MetricsStream(self.connection)

    # what to do in an outage, and for how long: read at each call, so a job may change them as it ends
    @property
    def on_outage(self) -> Callable[[], None] | None:
        return self.connection.on_outage

    @on_outage.setter
    def on_outage(self, value: Callable[[], None] | None) -> None:
        self.connection.on_outage = value

    @property
    def outage_timeout_s(self) -> float:
        return self.connection.outage_timeout_s

    @outage_timeout_s.setter
    def outage_timeout_s(self, value: float) -> None:
        self.connection.outage_timeout_s = value

    # ---- run registry (registry.py) -------------------------------------------------------------------

    def register_run(self, config: dict) -> None:
        self.registry.register(config)

    def update_run(self, **fields: Any) -> None:
        self.registry.update(**fields)

    def run_info(self) -> dict[str, str]:
        return self.registry.info()

    def status(self) -> dict[str, Any]:
        return self.registry.status(self.ownership, self.commands)

    # ---- lease: one owner per run (lease.py) ----------------------------------------------------------

    def acquire_lease(self, owner: dict[str, Any], ttl_s: float) -> None:
        self.ownership.acquire(owner, ttl_s)

    def renew_lease(self, owner: dict[str, Any], ttl_s: float) -> None:
        """Extend this owner's lease (re-taking it if it expired and nobody took over); RunOwnedError otherwise."""
        self.ownership.acquire(owner, ttl_s)

    def release_lease(self, owner: dict[str, Any], outage_timeout_s: float = 5.0) -> None:
        self.ownership.release(owner, outage_timeout_s)

    def lease(self) -> dict[str, Any] | None:
        return self.ownership.current()

    # ---- workers (heartbeats.py) ----------------------------------------------------------------------

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        return read_heartbeats(self.connection)

    # ---- the ledger (ledger.py; the settle and the audit: ledger_audit.py) ----------------------------

    def ledger_queue(self, group_ids: list[str]) -> None:
        self.ledger.queue(group_ids)

    def ledger_sampled(self, group_id: str, worker: str, policy_version: int) -> None:
        self.ledger.sampled(group_id, worker, policy_version)

    def ledger_scored(self, group_id: str, reward_version: int) -> None:
        self.ledger.scored(group_id, reward_version)

    def ledger_dropped(self, group_id: str, reason: str) -> None:
        self.ledger.dropped(group_id, reason)

    def ledger_commit_step(self, step: int, group_ids: list[str]) -> None:
        self.ledger.commit_step(step, group_ids)

    def ledger_rollback(self, to_step: int) -> list[str]:
        return self.ledger.rollback(to_step)

    def ledger_states(self) -> dict[str, dict[str, Any]]:
        return self.ledger.states()

    def ledger_log(self) -> list[dict[str, Any]]:
        return self.ledger.log()

    def ledger_settle(self, before_step: int) -> int:
        return self.ledger_audit.settle(before_step)

    def audit(self, final_step: int, *, finished: bool = True) -> AuditReport:
        return self.ledger_audit.audit(final_step, finished=finished)

    # ---- commands (commands.py) -----------------------------------------------------------------------

    def send_command(self, op: str, **args: Any) -> str:
        return self.commands.send(op, **args)

    def take_commands(self) -> list[Command]:
        return self.commands.take()

    def record_outcome(self, command_id: str, status: str, reason: str = "") -> None:
        self.commands.record_outcome(command_id, status, reason)

    def command_outcome(self, command_id: str) -> dict[str, Any] | None:
        return self.commands.outcome(command_id)

    def wait_for_outcome(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        return self.commands.wait_for_outcome(command_id, timeout_s)

    def rejected_commands(self) -> list[dict[str, Any]]:
        return self.commands.rejected()

    # ---- metrics (metrics_stream.py) ------------------------------------------------------------------

    def publish_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.publish(step, metrics)

    def read_metrics(self) -> list[dict]:
        return self.metrics.read()

    def forget_metrics_from(self, step: int) -> int:
        return self.metrics.forget_from(step)
