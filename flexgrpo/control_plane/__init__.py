"""The Redis control plane: what must outlive any process, and what an operator talks to.

One module per concern, each owning its keys (all named in keys.py, with the table of the whole layout) and the
operations on them, its Lua scripts with it:

  keys.py            every key name
  connection.py      the clients; every call waits out a Redis outage with backoff (ControlPlaneUnavailable)
  registry.py        the run registry, the run's status, RUN_DIR/status.json
  lease.py           who owns the run: the lease (RunOwnedError)
  heartbeats.py      workers beating for themselves, and their ages
  ledger.py          every group's life: queue, sample, score, drop, commit a step, roll back (LedgerError)
  ledger_audit.py    settling old groups away, and the audit of a run
  commands.py        operator commands, their outcomes, the rejected ones (CommandError)
  metrics_stream.py  the per-step metrics stream
  plane.py           ControlPlane, the one object the roles hold: it composes the concerns above
"""

from flexgrpo.control_plane.commands import COMMAND_OPS, COMMAND_OUTCOMES, REJECTED_KEPT, Command, CommandError
from flexgrpo.control_plane.connection import OUTAGE_ERRORS, ControlPlaneUnavailable
from flexgrpo.control_plane.heartbeats import Heartbeat
from flexgrpo.control_plane.lease import RunOwnedError
from flexgrpo.control_plane.ledger import LEDGER_STATES, LedgerError
from flexgrpo.control_plane.ledger_audit import AuditReport
from flexgrpo.control_plane.plane import ControlPlane
from flexgrpo.control_plane.registry import (
    JSON_FIELDS,
    LIVE_STATUSES,
    STATUS_FILE,
    read_status_file,
    write_status_file,
)

__all__ = [
    "COMMAND_OPS",
    "COMMAND_OUTCOMES",
    "JSON_FIELDS",
    "LEDGER_STATES",
    "LIVE_STATUSES",
    "OUTAGE_ERRORS",
    "REJECTED_KEPT",
    "STATUS_FILE",
    "AuditReport",
    "Command",
    "CommandError",
    "ControlPlane",
    "ControlPlaneUnavailable",
    "Heartbeat",
    "LedgerError",
    "RunOwnedError",
    "read_status_file",
    "write_status_file",
]
