"""A job that joins a Ray cluster (`cluster.address`) hands its workers addresses another host can reach: the
embedded Redis on the head node's cluster IP (Ray's node IP, not loopback), the learner's and the weight sync's
rendezvous on Ray node IPs; every worker wrote its heartbeat through that address. The cluster (one node here,
in a helper process) and the job (the real entry point) are subprocesses: this pytest process never touches Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.process_job import kill_tree

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = """
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 3, "include_dashboard": False})
print("@@", json.dumps({"address": cluster.address, "ip": cluster.head_node.node_ip_address}), flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def test_a_cluster_job_hands_its_workers_the_node_ip(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="fg-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    env = os.environ | {"RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_SCRIPT],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        started = next(json.loads(line[3:]) for line in cluster.stdout if line.startswith("@@ "))
        ip = started["ip"]
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
                f"cluster.address={started['address']}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        cluster.stdin.close()
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(cluster)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == 0, job.stderr[-4000:]
    run_dir = tmp_path / "joined"
    redis_host = re.search(r"@([^:/]+):\d+/", (run_dir / "redis_url").read_text()).group(1)
    assert redis_host == ip
    log = (run_dir / "train.log").read_text()
    handed = re.findall(r"(?:Redis for the workers|rendezvous for the [\w ]+): ([\d.]+):\d+", log)
    assert len(handed) == 3 and set(handed) == {ip}, handed  # Redis, the learner's and the weight sync's
    beats = json.loads((run_dir / "status.json").read_text())["heartbeats"]
    assert {"rollout-0", "reward-0", "learner-0"} <= beats.keys()  # each reached Redis at the node IP
