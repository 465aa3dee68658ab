"""The deployment files parse, and the jobs they start name recipes that exist and load with their overrides."""

import re
import shlex
from pathlib import Path

import yaml

from flexgrpo.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "cluster" / "deploy"
REPO = DEPLOY.parents[1]


def _train_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    args = words[words.index("train") + 1 :]
    return args[0], [a for a in args[1:] if "=" in a]


def test_rayjob_entrypoint_loads(monkeypatch):
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    recipe, overrides = _train_args(job["spec"]["entrypoint"])
    monkeypatch.setenv("FLEXGRPO_REDIS_URL", "redis://:secret@redis:6379/0")
    cfg = load_config(REPO / recipe, overrides)
    assert cfg.cluster.address == "auto" and cfg.cluster.redis_url == "redis://:secret@redis:6379/0"
    assert cfg.prompts.file == "/checkpoints/prompts.txt"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    wanted = sum(
        p.num_workers * p.gpus_per_worker for p in (cfg.cluster.rollout, cfg.cluster.reward, cfg.cluster.learner)
    )
    assert wanted <= gpus * workers["replicas"]
    # the pools can grow (a scale command, a lost node's workers re-placed): the autoscaler may add workers
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert workers["maxReplicas"] > workers["replicas"]


def test_ray_cluster_yaml_and_slurm_script_are_wellformed():
    cluster = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert cluster["provider"]["type"] == "local" and cluster["head_start_ray_commands"]
    script = (DEPLOY / "slurm.sbatch").read_text()
    default = re.search(r"RECIPE=\$\{1:-(\S+)\}", script).group(1)
    assert (REPO / default).is_file()
    load_config(REPO / default, ["cluster.address=10.0.0.1:6379"])
    assert "--signal=B:TERM" in script  # pre-emption reaches the driver, which checkpoints


def test_slurm_script_parses_with_bash_n():
    import subprocess

    result = subprocess.run(["bash", "-n", str(DEPLOY / "slurm.sbatch")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
