"""A cluster that loses and gains nodes under a running job. A tiny job joins a local multi-node Ray cluster (a
head without GPUs and one GPU per worker node, so every worker has a node of its own; no spare node) and, in
turn:

1. is told `flexgrpo command RUN scale --pool rollout --workers 2`: the outcome says the new worker is pending on
   resources and the job goes on; a node joins, and the new worker is placed, gets the current weights and
   carries groups beside the first;
2. loses the node of rollout-1 (no spare): the pool goes on degraded (one of two workers, `waiting` in the status
   names the other) and grows back when a node joins;
3. loses the node of rollout-0 with a spare node free: Ray re-places the worker there;
4. loses the node of its reward worker: the job waits for scores, says for what, and goes on when a node joins;
5. loses the node of its learner rank: the job waits for room, the learner pool is rebuilt on a node that joins
   and reloads the latest checkpoint;
6. is scaled back to one rollout worker, and stopped.

The job is the real entry point (`flexgrpo train` in a subprocess). It trained every step exactly once with a
clean audit, on-policy throughout (every worker that joined or came back had the learner's weights)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.local_cluster import LocalCluster, alive_on
from tests.process_job import Job, kill_tree, sampled_by, wait_until
from tests.user_shell import FLEXGRPO

pytestmark = pytest.mark.long
STEPS = 1000  # more than the test needs: it stops the job when done (a step takes ~0.5 s with the hold)


def command(job: Job, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLEXGRPO, "command", str(job.run_dir), *args], capture_output=True, text=True, timeout=180)


def test_job_survives_lost_nodes_and_grows_and_shrinks_its_pools(tmp_path):
    with LocalCluster(worker_nodes=3) as cluster:  # rollout, reward, learner: no room for more
        job = Job(tmp_path, "elastic", STEPS, f"cluster.address={cluster.address}", "holds.rollout_s=0.5")
        job.start(env=cluster.env)
        try:
            # 1. a scale-up beyond capacity is pending, the job goes on; a node joins and the worker carries groups
            control = job.wait_for_step(2)
            grown = command(job, "scale", "--pool", "rollout", "--workers", "2")
            assert grown.returncode == 0, grown.stdout + grown.stderr
            assert "pending on resources" in grown.stdout and "rollout-1" in grown.stdout, grown.stdout
            job.wait_for_step(int(control.run_info()["step"]) + 2)
            assert "rollout-1" in control.run_info().get("waiting", "")
            cluster.add_node()
            wait_until("rollout-1 carries groups", lambda: sampled_by(control).get("rollout-1", 0) >= 2, job)

            # 2. rollout-1's node is lost, no spare: degraded, training goes on, then it grows back
            lost = alive_on(cluster, "rollout-1")
            cluster.remove_node(lost)
            wait_until("status names what waits", lambda: "rollout-1" in control.run_info().get("waiting", ""), job)
            job.wait_for_step(int(control.run_info()["step"]) + 2)  # on rollout-0 alone
            before = sampled_by(control).get("rollout-1", 0)
            cluster.add_node()
            wait_until(
                "rollout-1 back on another node", lambda: alive_on(cluster, "rollout-1") not in (None, lost), job
            )
            wait_until("rollout-1 carries groups again", lambda: sampled_by(control).get("rollout-1", 0) > before, job)

            # 3. rollout-0's node is lost with a spare node free: the worker comes back on the spare
            spare = cluster.add_node()
            cluster.remove_node(alive_on(cluster, "rollout-0"))
            wait_until("rollout-0 back on the spare", lambda: alive_on(cluster, "rollout-0") == spare, job)
            job.wait_for_step(int(control.run_info()["step"]) + 2)

            # 4. the reward worker's node, no spare: the job waits for scores, saying for what, until a node joins
            cluster.remove_node(alive_on(cluster, "reward-0"))
            wait_until("status names what waits", lambda: "reward-0" in control.run_info().get("waiting", ""), job)
            cluster.add_node()
            wait_until("the waiting line cleared", lambda: control.run_info().get("waiting", "") == "", job)

            # 5. the learner rank's node, no spare: the job waits for room, then the learner reloads its checkpoint
            job.wait_for_step(int(control.run_info()["step"]) + 1)
            cluster.remove_node(alive_on(cluster, "learner-0"))
            wait_until("status names what waits", lambda: "learner" in control.run_info().get("waiting", ""), job)
            cluster.add_node()
            wait_until("the learner is back", lambda: control.run_info().get("waiting", "") == "", job, 300)
            job.wait_for_step(int(control.run_info()["step"]) + 2)

            # 6. back to one rollout worker; the learner's world is not a pool to scale
            shrunk = command(job, "scale", "--pool", "rollout", "--workers", "1")
            assert shrunk.returncode == 0 and "removed rollout-1" in shrunk.stdout, shrunk.stdout + shrunk.stderr
            refused = command(job, "scale", "--pool", "learner", "--workers", "2")
            assert refused.returncode == 2 and "invalid choice" in refused.stderr
            control.send_command("stop")  # (not the CLI: the job's Redis may end before it reads the outcome)
            assert job.wait(timeout_s=300) == 0, job.tail()
        finally:
            kill_tree(job.process)

    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows))), job.tail()
    assert json.loads((job.run_dir / "status.json").read_text())["status"] == "stopped"
    assert max(r["rollout/workers_live"] for r in rows) == 2 and rows[-1]["rollout/workers_wanted"] == 1
    assert rows[-1]["system/recoveries"] >= 3
    assert all(r["loss/ratio_max_dev"] < 1e-5 for r in rows)  # workers that joined or came back had the weights
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)
