"""What every role inherits to write its own heartbeat into the run's Redis (see `control_plane.Heartbeat`)."""

from __future__ import annotations

from flexgrpo.control_plane import Heartbeat


class Heartbeating:
    """Mixin of the role classes: after `start_heartbeat`, a daemon thread of the worker's own process beats."""

    _heartbeat: Heartbeat | None = None

    def start_heartbeat(self, redis_url: str, run: str, name: str) -> None:
        """(Re)start this worker's heartbeat under `name` (e.g. rollout-0); a restarted actor calls it again."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._heartbeat = Heartbeat(redis_url, run, name).start()
