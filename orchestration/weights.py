"""Publishing new weights without waiting for them: learner rank 0 broadcasts in a thread of its own, each
rollout worker receives in its weights thread and switches between groups."""

from __future__ import annotations

import ray

from flexgrpo.records import WeightUpdate
from orchestration.roles import Roles


class WeightBroadcast:
    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self.receiving: list[ray.ObjectRef] = []  # receive calls not yet known to have finished

    def publish(self) -> WeightUpdate:
        """Publish the learner's current version to every rollout worker; returns once the learner has taken its
        snapshot (every rank takes part: ZeRO-3 gathers collectively). Raises what an earlier receive raised."""
        from actors.rollout_worker import WEIGHTS_THREAD

        self.check()
        header = ray.get([a.publish_weights.remote() for a in self.roles.learner.actors])[0]
        self.receiving += [
            w.receive_weights.options(concurrency_group=WEIGHTS_THREAD).remote(header)
            for w in self.roles.rollout.actors
        ]
        return header

    def check(self) -> None:
        """Forget the receives that finished; re-raise the first that failed (a dead worker)."""
        done, self.receiving = ray.wait(self.receiving, num_returns=len(self.receiving), timeout=0)
        ray.get(done)

    def forget(self) -> None:
        """After a recovery rebuilt the weight-sync group: the old receives no longer matter."""
        self.receiving = []
