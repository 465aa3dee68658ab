"""The weight-sync rendezvous port is picked free on the learner's node, then bound by the learner a moment later:
another process may take it in between (a CI rehearsal saw it). The learner's bind fails with EADDRINUSE, the
workers that reached the other process give up after `cluster.weight_sync_join_s`, and the group is built
again on another port; the weights then go through it."""

from __future__ import annotations

import socket
import threading

import pytest

from orchestration.roles import connect_weight_sync
from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow
JOIN_S = 5.0


def hang_up(server: socket.socket) -> None:
    """Another service on the port: it answers each connection by closing it (a worker that reached it retries
    until the rendezvous' timeout)."""
    while True:
        try:
            connection, _ = server.accept()
        except OSError:  # closed: the test is over
            return
        connection.close()


def test_a_taken_rendezvous_port_is_replaced_and_the_weights_go_through(ray_local, tmp_path):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "run.name=port", f"cluster.weight_sync_join_s={JOIN_S}")
    with trainer(cfg, tmp_path / "port") as run, socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        threading.Thread(target=hang_up, args=(taken,), daemon=True).start()
        learner = run.roles.learner
        host, _ = learner.rendezvous_address()
        picked = iter([(host, taken.getsockname()[1])])  # the fault: the first port picked is taken meanwhile
        free = learner.rendezvous_address
        learner.rendezvous_address = lambda: next(picked, None) or free()

        assert connect_weight_sync(run.roles, JOIN_S) == [], "no worker was lost, only the port"
        assert next(picked, None) is None, "the taken port was tried"
        assert run.weights.publish() is not None, "the broadcast over the new group failed"
        run.weights.wait_received()
        assert run.weights.receiving == [] and run.recovery.count == 0, "a receive failed and was recovered from"
