"""A lost node costs only its work. A tiny job joins a local multi-node Ray cluster (a head without GPUs and one
GPU per worker node, so each pool's worker has a node of its own) and loses, in turn, the node of its rollout
worker (a spare node is free: Ray re-places the worker there), the node of its reward worker (no spare: the job
waits for scores, says what it waits for, and goes on when a node joins some seconds later), and the node of its
learner rank (no spare: the job waits for room; the learner pool is rebuilt on a node that joins and reloads the
latest checkpoint). The job is
the real entry point (`flexgrpo train` in a subprocess); it finishes every step exactly once and the audit is
clean."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.local_cluster import LocalCluster
from tests.process_job import FLEXGRPO, Job, kill_tree

pytestmark = pytest.mark.slow
STEPS = 16  # checkpoints every 3 steps (process_job.Job): the learner's loss goes back to the last multiple of 3


def wait_until(what: str, condition, job: Job, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline and job.process.poll() is None, f"{what}:\n{job.tail()}"
        time.sleep(0.5)


def alive_on(cluster: LocalCluster, actor: str) -> str | None:
    """The node an actor is alive on (None: not alive now)."""
    state, node = cluster.actors().get(actor, ("", ""))
    return node if state == "ALIVE" else None


def test_job_survives_losing_the_node_of_each_role(tmp_path):
    with LocalCluster(worker_nodes=4) as cluster:  # rollout, reward, learner, and one spare
        # a hold of 0.3 s per sampled group: the job is still training when each node goes (~0.5 s a step)
        job = Job(tmp_path, "nodes", STEPS, f"cluster.address={cluster.address}", "holds.rollout_s=0.3")
        job.start(env=cluster.env)
        try:
            # the rollout worker's node, with a spare node free: the worker comes back on the spare
            job.wait_for_step(2)
            lost = alive_on(cluster, "rollout-0")
            cluster.remove_node(lost)
            wait_until(
                "rollout-0 back on another node", lambda: alive_on(cluster, "rollout-0") not in (None, lost), job
            )
            job.wait_for_step(4)

            # the reward worker's node, no spare: the job waits, saying for what, until a node joins
            control = job.wait_for_step(5)
            cluster.remove_node(alive_on(cluster, "reward-0"))
            wait_until("status names what waits", lambda: "reward-0" in control.run_info().get("waiting", ""), job)
            stalled_at = int(control.run_info()["step"])
            time.sleep(5)
            assert int(control.run_info()["step"]) <= stalled_at + 1  # (a step whose groups were scored may end)
            cluster.add_node()
            wait_until("reward-0 back", lambda: alive_on(cluster, "reward-0") is not None, job)
            wait_until("the waiting line cleared", lambda: control.run_info().get("waiting", "") == "", job)

            # the learner rank's node, no spare: the job waits for room, then the learner reloads its checkpoint
            job.wait_for_step(8)
            cluster.remove_node(alive_on(cluster, "learner-0"))
            wait_until("status names what waits", lambda: "learner" in control.run_info().get("waiting", ""), job)
            cluster.add_node()
            assert job.wait(timeout_s=600) == 0, job.tail()
        finally:
            kill_tree(job.process)

    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS)), job.tail()
    assert rows[-1]["system/recoveries"] >= 3
    assert all(r["loss/ratio_max_dev"] < 1e-5 for r in rows)  # every worker that came back had the weights
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)
