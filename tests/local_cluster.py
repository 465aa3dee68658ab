"""A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`) in a process of its own, for jobs that
join it by address: nodes can be added and removed while a job runs (a lost host, a node that joins). The test
process never touches Ray itself (the session's `ray_local` may be up)."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.process_job import kill_tree

REPO = Path(__file__).resolve().parents[1]
ONE_AT_A_TIME = Path(tempfile.gettempdir()) / "flexgrpo-local-cluster.lock"

# Answers each stdin line with one JSON line: "actors" -> {name: [state, node id]}, "add" -> the new node's id,
# "remove ID" -> the id. Worker nodes have one GPU each: every bundle of a pool ({CPU, GPU: 1}) takes a node of
# its own. The head has argv[2] GPUs (0: nothing of a pool lands there). The GCS picks a free port (no clash with
# other clusters on this machine).
CLUSTER_SCRIPT = """
import json, sys
from ray.cluster_utils import Cluster

def retried(start):
    # Ray gives a node 30 s to register (hard-coded); a loaded 2-core machine can miss it: start it again
    for attempt in range(3):
        try:
            return start()
        except Exception as err:
            if attempt == 2:
                raise
            print("node start-up timed out, starting it again:", err, file=sys.stderr, flush=True)

head_gpus = int(sys.argv[2])
head = {"num_cpus": 1 + (head_gpus > 0), "num_gpus": head_gpus, "include_dashboard": False}
cluster = retried(lambda: Cluster(initialize_head=True, head_node_args=head))
nodes = {cluster.head_node.node_id: cluster.head_node}
def add():
    node = retried(lambda: cluster.add_node(num_cpus=1, num_gpus=1))
    nodes[node.node_id] = node
    return node.node_id
workers = [add() for _ in range(int(sys.argv[1]))]
print("@@", json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "workers": workers}), flush=True)
for line in sys.stdin:
    op, _, arg = line.strip().partition(" ")
    if op == "actors":
        table = cluster.global_state.actor_table(None)
        answer = {a["Name"]: [a["State"], a["Address"]["NodeID"]] for a in table.values() if a["Name"]}
    elif op == "add":
        answer = add()
    elif op == "remove":
        cluster.remove_node(nodes.pop(arg))
        answer = arg
    print("@@", json.dumps(answer), flush=True)
cluster.shutdown()
"""


class LocalCluster:
    """`with LocalCluster(4) as cluster:` a head and 4 one-GPU worker nodes; `cluster.address` to join. One such
    cluster at a time on this machine (test processes side by side wait for each other): each node is a raylet
    with its own processes, and several clusters starting at once on 2 cores time Ray's start-up out."""

    def __init__(self, worker_nodes: int, head_gpus: int = 0) -> None:
        """head_gpus: GPUs of the head node (0: nothing of a pool lands there)."""
        self.worker_nodes, self.head_gpus = worker_nodes, head_gpus
        self.ray_tmp = tempfile.mkdtemp(prefix="fg-ray-", dir="/tmp")  # Ray's socket paths must fit 107 chars
        self.env = os.environ | {"RAY_TMPDIR": self.ray_tmp, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}

    def __enter__(self) -> LocalCluster:
        self._one_at_a_time = open(ONE_AT_A_TIME, "w")  # noqa: SIM115  (held until __exit__)
        fcntl.flock(self._one_at_a_time, fcntl.LOCK_EX)
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLUSTER_SCRIPT, str(self.worker_nodes), str(self.head_gpus)],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        started = self._reply()
        self.address, self.head, self.workers = started["address"], started["head"], started["workers"]
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()  # the script shuts the cluster down, then we end whatever is left
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(self.process)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        self._one_at_a_time.close()  # (releases the lock)

    def _pump(self) -> None:
        for line in self.process.stdout:
            if line.startswith("@@ "):  # Ray may write lines of its own
                self._answers.put(json.loads(line[3:]))
        self._answers.put(None)

    def _reply(self, timeout_s: float = 300):
        answer = self._answers.get(timeout=timeout_s)  # queue.Empty: the cluster script hangs
        if answer is None:
            raise RuntimeError("the cluster script ended (its stderr is in the captured output)")
        return answer

    def ask(self, line: str, timeout_s: float = 300):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._reply(timeout_s)

    def actors(self) -> dict[str, tuple[str, str]]:
        """{actor name: (state, node id)} of every named actor."""
        return {name: tuple(v) for name, v in self.ask("actors").items()}

    def add_node(self) -> str:
        return self.ask("add")

    def remove_node(self, node_id: str) -> None:
        self.ask("remove " + node_id)


def alive_on(cluster: LocalCluster, actor: str) -> str | None:
    """The node an actor is alive on (None: not alive now)."""
    state, node = cluster.actors().get(actor, ("", ""))
    return node if state == "ALIVE" else None
