"""DeepSpeed's rendezvous port for the learner ranks is picked free on rank 0's node, then bound by rank 0 as it
starts: another process may take it in between (a CI rehearsal saw it: rank 0 died in its constructor with
EADDRINUSE, and the job with it). The ranks start again on another port, the rank that waited on the taken one
included, and meet there."""

from __future__ import annotations

import socket

import pytest

from cluster.ray_cluster import RoleGroup
from orchestration.roles import start_learner_ranks
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_the_learner_ranks_start_again_on_another_port(ray_local, tmp_path):
    ray = ray_local
    cfg = tiny_config(f"run.output_dir={tmp_path}", "cluster.learner.num_workers=2", "cluster.num_gpus=4")
    learner = RoleGroup(cfg.cluster.learner, name="learner", wait_s=60)
    try:
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen()  # never accepts: rank 1 waits on it until it is ended
            host, _ = learner.rendezvous_address()
            picked = iter([(host, taken.getsockname()[1])])  # the fault: the first port picked is taken meanwhile
            free = learner.rendezvous_address
            learner.rendezvous_address = lambda: next(picked, None) or free()

            start_learner_ranks(learner, cfg)

            assert next(picked, None) is None, "the taken port was tried"
        # each rank's constructor joins the process group of the whole world: both answer once they met
        assert ray.get([rank.ready.remote() for rank in learner.actors], timeout=60) == [0, 0]
    finally:
        learner.shutdown()
