"""A job that joins a Ray cluster (`cluster.address`) hands its workers addresses another host can reach: the
embedded Redis on the head node's cluster IP (Ray's node IP, not loopback), the learner's and the weight sync's
rendezvous on Ray node IPs; every worker wrote its heartbeat through that address. The cluster (one node here,
tests/local_cluster.py) and the job (the real entry point) are subprocesses: this pytest process never touches Ray."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_cluster import LocalCluster

pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[1]


def test_a_cluster_job_hands_its_workers_the_node_ip(tmp_path):
    with LocalCluster(worker_nodes=0, head_gpus=3) as cluster:  # one node, the tiny recipe's three pools on it
        ip = cluster.address.rpartition(":")[0]
        if ip.startswith("127."):
            pytest.skip("Ray's node IP here is loopback: nothing to tell apart")
        job = subprocess.run(
            [
                str(Path(sys.executable).parent / "flexgrpo"),
                "train",
                f"run.output_dir={tmp_path}",
                "run.name=joined",
                "run.num_steps=1",
                "grpo.groups_per_step=1",
                "grpo.group_size=2",
                f"cluster.address={cluster.address}",
            ],
            cwd=REPO,
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert job.returncode == 0, job.stderr[-4000:]
    run_dir = tmp_path / "joined"
    redis_host = re.search(r"@([^:/]+):\d+/", (run_dir / "redis_url").read_text()).group(1)
    assert redis_host == ip
    log = (run_dir / "train.log").read_text()
    handed = re.findall(r"(?:Redis for the workers|rendezvous for the [\w ]+): ([\d.]+):\d+", log)
    assert len(handed) == 3 and set(handed) == {ip}, handed  # Redis, the learner's and the weight sync's
    beats = json.loads((run_dir / "status.json").read_text())["heartbeats"]
    assert {"rollout-0", "reward-0", "learner-0"} <= beats.keys()  # each reached Redis at the node IP
