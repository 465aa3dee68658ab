"""The weight-sync rendezvous port is picked free on the learner's node, then bound by the learner a moment later:
another process may take it in between (a CI rehearsal saw it). The learner's bind fails with EADDRINUSE, and
the group is built again on another port; the weights then go through it. What the workers reached on the taken
port decides what else happens:

- a service that closes each connection (another protocol): they give up after `cluster.weight_sync_join_s`,
  and no worker is lost;
- one that accepts and never answers: a worker's join hangs past its timeout, and its weights thread with it, so
  every later rendezvous would time out and end the job. A worker still stuck after a grace period is restarted
  (counted as lost) and joins again once it is back."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from orchestration.roles import connect_weight_sync
from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow
JOIN_S = 5.0


def hang_up(server: socket.socket) -> None:
    """Answer each connection by closing it."""
    while True:
        try:
            connection, _ = server.accept()
        except OSError:  # closed: the test is over
            return
        connection.close()


@pytest.mark.parametrize("taker", ["closes", pytest.param("never-answers", marks=pytest.mark.long)])
def test_a_taken_rendezvous_port_is_replaced_and_the_weights_go_through(ray_local, tmp_path, taker):
    cfg = tiny_config(f"run.output_dir={tmp_path}", "run.name=port", f"cluster.weight_sync_join_s={JOIN_S}")
    with trainer(cfg, tmp_path / "port") as run, socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        if taker == "closes":
            threading.Thread(target=hang_up, args=(taken,), daemon=True).start()
        learner = run.roles.learner
        host, _ = learner.rendezvous_address()
        picked = iter([(host, taken.getsockname()[1])])  # the fault: the first port picked is taken meanwhile
        free = learner.rendezvous_address
        learner.rendezvous_address = lambda: next(picked, None) or free()

        lost = connect_weight_sync(run.roles, JOIN_S)
        assert next(picked, None) is None, "the taken port was tried"
        if taker == "closes":
            assert lost == [], "no worker was lost, only the port"
        else:
            assert lost == [0], "the stuck worker was restarted"
            deadline = time.monotonic() + 180
            while run.roles.rollout.live != [0]:  # it joins again (the weight-sync group, the weights)
                assert time.monotonic() < deadline, "rollout-0 did not join again"
                run.recovery.poll_pools()
                time.sleep(0.2)
        assert run.weights.publish() is not None, "the broadcast over the new group failed"
        run.weights.wait_received()
        assert run.weights.receiving == [], "a receive failed and was recovered from"
