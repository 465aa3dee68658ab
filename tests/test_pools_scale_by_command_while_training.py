"""Elastic pools by command. A tiny job on a local multi-node Ray cluster with no spare node is told
`flexgrpo command RUN scale --pool rollout --workers 2`: the outcome says the new worker is pending on resources
and the job goes on; when a node joins, the worker is placed, receives the current weights and carries groups
beside the first. Its node is then lost with no spare: the pool goes on degraded (one live worker of two wanted,
training continues) and grows back when another node joins. Scaled back to one worker and stopped, the job has
trained every step exactly once with a clean audit, on-policy throughout (every worker had the learner's
weights)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.local_cluster import LocalCluster
from tests.process_job import FLEXGRPO, Job, kill_tree
from tests.test_lost_nodes_cost_only_their_work import alive_on, wait_until

pytestmark = pytest.mark.slow
STEPS = 1000  # more than the test needs: it stops the job when done (a step takes ~0.5 s with the hold)


def command(job: Job, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLEXGRPO, "command", str(job.run_dir), *args], capture_output=True, text=True, timeout=180)


def sampled_by(control) -> dict[str, int]:
    """Groups sampled by each rollout worker so far, from the ledger."""
    counts: dict[str, int] = {}
    for event in control.ledger_log():
        if event["to"] == "sampled":
            counts[event["worker"]] = counts.get(event["worker"], 0) + 1
    return counts


def test_rollout_pool_grows_shrinks_and_survives_its_new_node(tmp_path):
    with LocalCluster(worker_nodes=3) as cluster:  # rollout, reward, learner: no room for more
        job = Job(tmp_path, "elastic", STEPS, f"cluster.address={cluster.address}", "holds.rollout_s=0.5")
        job.start(env=cluster.env)
        try:
            control = job.wait_for_step(2)
            grown = command(job, "scale", "--pool", "rollout", "--workers", "2")
            assert grown.returncode == 0, grown.stdout + grown.stderr
            assert "pending on resources" in grown.stdout and "rollout-1" in grown.stdout, grown.stdout
            step = int(control.run_info()["step"])
            job.wait_for_step(step + 2)  # the job goes on while rollout-1 waits
            assert "rollout-1" in control.run_info().get("waiting", "")

            cluster.add_node()
            wait_until("rollout-1 carries groups", lambda: sampled_by(control).get("rollout-1", 0) >= 2, job)
            assert sampled_by(control).get("rollout-0", 0) >= 2

            # rollout-1's node is lost with no spare: degraded, training goes on, then it grows back
            lost = alive_on(cluster, "rollout-1")
            cluster.remove_node(lost)
            wait_until("status names what waits", lambda: "rollout-1" in control.run_info().get("waiting", ""), job)
            step = int(control.run_info()["step"])
            job.wait_for_step(step + 2)  # on rollout-0 alone
            cluster.add_node()
            wait_until("rollout-1 back", lambda: alive_on(cluster, "rollout-1") not in (None, lost), job)
            before = sampled_by(control).get("rollout-1", 0)
            wait_until("rollout-1 carries groups again", lambda: sampled_by(control).get("rollout-1", 0) > before, job)

            shrunk = command(job, "scale", "--pool", "rollout", "--workers", "1")
            assert shrunk.returncode == 0 and "removed rollout-1" in shrunk.stdout, shrunk.stdout + shrunk.stderr
            refused = command(job, "scale", "--pool", "learner", "--workers", "2")
            assert refused.returncode == 2 and "invalid choice" in refused.stderr  # argparse names the pools
            stopped = command(job, "stop")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert job.wait(timeout_s=300) == 0, job.tail()
        finally:
            kill_tree(job.process)

    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows))), job.tail()
    assert json.loads((job.run_dir / "status.json").read_text())["status"] == "stopped"
    assert max(r["rollout/workers_live"] for r in rows) == 2 and rows[-1]["rollout/workers_wanted"] == 1
    assert all(r["loss/ratio_max_dev"] < 1e-5 for r in rows)  # the new worker sampled with the learner's weights
    audit = subprocess.run([FLEXGRPO, "audit", str(job.run_dir)], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert re.search(r"groups lost:\s+0\n", audit.stdout) and re.search(r"trained twice:\s+0\n", audit.stdout)
