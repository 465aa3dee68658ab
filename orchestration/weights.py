"""Publishing new weights without waiting for them: learner rank 0 broadcasts in a thread of its own, each
rollout worker receives in its weights thread and switches between groups."""

from __future__ import annotations

import logging
from collections.abc import Callable

import ray

from flexgrpo.records import WeightUpdate
from orchestration.roles import Roles

log = logging.getLogger("flexgrpo")
FAILED = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError)  # a receive or a send that failed


class WeightBroadcast:
    def __init__(self, roles: Roles, on_failure: Callable[[Exception], None]) -> None:
        """on_failure: called when a broadcast failed (a worker or a learner rank died); it recovers the roles
        and publishes again, or raises."""
        self.roles, self.on_failure = roles, on_failure
        self.receiving: list[ray.ObjectRef] = []  # receive calls not yet known to have finished

    def publish(self, ema: bool = False) -> WeightUpdate | None:
        """Publish the learner's current version to every rollout worker (ema: the EMA of its weights, which
        workers keep apart for evaluation): the workers start receiving the announced header, then the learner
        publishes that header from every rank; returns once rank 0 has taken its snapshot (every rank takes
        part: ZeRO-3 gathers collectively).
        An earlier broadcast that failed is recovered from first (`on_failure`, which publishes the policy
        again). -> the header, or None when this broadcast failed."""
        from actors.rollout_worker import WEIGHTS_THREAD

        learners = self.roles.learner.actors
        try:
            self._check()
            header = ray.get(learners[0].weight_header.remote(ema))
            self.receiving += [  # receiving before the learner sends: a ring snapshot needs the wire to move
                w.receive_weights.options(concurrency_group=WEIGHTS_THREAD).remote(header)
                for w in self.roles.rollout.actors
            ]
            ray.get([a.publish_weights.remote(header) for a in learners])
        except FAILED as err:
            self._failed(err)
            return None
        return header

    def poll(self) -> None:
        """Forget the receives that finished; if one failed, recover now (`on_failure`)."""
        try:
            self._check()
        except FAILED as err:
            self._failed(err)

    def _check(self) -> None:
        """Forget the receives that finished; re-raise the first that failed (a dead worker)."""
        done, self.receiving = ray.wait(self.receiving, num_returns=len(self.receiving), timeout=0)
        ray.get(done)

    def _failed(self, err: Exception) -> None:
        log.warning("a weight broadcast failed: %s", str(err).splitlines()[0])
        self.receiving = []
        self.on_failure(err)

    def wait_received(self) -> None:
        """Block until every rollout worker holds the published weights; a receive that failed (a worker lost
        meanwhile) is recovered from (`on_failure` sends them again to the live workers) and waited for too."""
        while self.receiving:
            ray.wait(self.receiving, num_returns=len(self.receiving))
            self.poll()

    def forget(self) -> None:
        """After a recovery rebuilt the weight-sync group: the old receives no longer matter."""
        self.receiving = []
