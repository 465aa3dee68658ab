"""`flexgrpo train`, run as a user runs it (the installed entry point, an environment with only PATH and HOME),
ends every failure with one line on stderr: bad input found after the config loads exits 2; a runtime failure
exits 1 naming the role and the cause, its traceback in RUN_DIR/train.log. Never a traceback on the terminal."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.user_shell import CLEAN_ENV, FLEXGRPO, REPO


def train(tmp_path: Path, *overrides: str, timeout_s: float = 120) -> tuple[int, str, float]:
    """Run `flexgrpo train` on the tiny recipe; -> exit code, stderr, seconds."""
    start = time.monotonic()
    done = subprocess.run(
        [FLEXGRPO, "train", f"run.output_dir={tmp_path / 'runs'}", "run.name=r", *overrides],
        cwd=REPO,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return done.returncode, done.stderr, time.monotonic() - start


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr and '  File "' not in stderr, stderr  # Ray shows remote ones without the word
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "has no prompts"),
        (b"  \n\t\n\n", "has no prompts"),
        (b"a cat\n\xff\xfe a dog\n", "is not UTF-8 text (byte 6)"),
        (None, "does not exist"),
    ],
    ids=["empty", "blank", "not-utf8", "missing"],
)
def test_a_bad_prompts_file_is_bad_input(tmp_path, content, expected):
    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_bytes(content)
    code, stderr, _ = train(tmp_path, f"prompts.file={prompts}")
    assert code == 2, stderr
    assert last_line(stderr).startswith(f"error: config error: prompts.file {str(prompts)!r} {expected}"), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_a_policy_folder_that_does_not_exist_is_bad_input(tmp_path):
    code, stderr, _ = train(tmp_path, f"policy.model={tmp_path / 'no-such-model'}")
    assert code == 2, stderr
    assert "policy.model" in last_line(stderr) and "is not a folder that exists" in last_line(stderr)


def test_no_ray_cluster_at_the_address_says_so_in_seconds(tmp_path):
    code, stderr, seconds = train(tmp_path, "cluster.address=127.0.0.1:1")
    assert code == 1, stderr
    line = last_line(stderr)
    assert line.startswith("error: driver: ClusterUnreachable: no Ray cluster answers at 127.0.0.1:1"), line
    assert line.endswith(f"(traceback: {tmp_path / 'runs' / 'r' / 'train.log'})"), line
    assert seconds < 60, seconds  # it used to wait for minutes (imports take most of these seconds)
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    assert "Traceback" in log and "check_cluster_answers" in log


def test_the_line_names_the_role_whose_code_raised_and_the_innermost_cause():
    import ray.exceptions

    from orchestration.failures import describe_failure

    raised = ray.exceptions.RayTaskError(
        "GRPOLearner.train_step",
        'Traceback (most recent call last):\n  File "learner.py", line 1\nRuntimeError: loss is nan',
        RuntimeError("loss is nan\nsecond line"),
        proctitle="ray::learner-0:GRPOLearner.train_step",
    )
    assert describe_failure(raised) == "learner: RuntimeError: loss is nan"
    assert describe_failure(raised.as_instanceof_cause()) == "learner: RuntimeError: loss is nan"  # what ray.get raises
    died_at_start = ray.exceptions.ActorDiedError(raised)  # a constructor that raised
    assert describe_failure(died_at_start) == "learner: RuntimeError: loss is nan"
    full_disk = OSError(28, "No space left on device")
    assert describe_failure(full_disk) == "driver: OSError: [Errno 28] No space left on device"


@pytest.mark.slow
def test_a_judge_that_cannot_start_ends_the_job_naming_it(tmp_path):
    """A judge folder that exists but holds garbage: the reward worker's vLLM engine cannot start."""
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text("{ not json")
    spec = f"rewards=[{{name: unifiedreward_flex, model: {judge}, backend: vllm}}]"
    code, stderr, _ = train(tmp_path, spec, "run.num_steps=1", "grpo.group_size=2", timeout_s=400)
    assert code == 1, stderr
    line = last_line(stderr)
    assert line.startswith(f"error: reward worker: JudgeStartError: the vLLM engine for judge model {judge}"), line
    assert "did not start" in line and "train.log" in line
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    assert "job failed: reward worker" in log and "Traceback" in log
    # what the actors print goes there, not to the terminal (Ray relays it late: the dying actor's own dump may
    # come after the job has ended, and is then dropped rather than printed)
    assert "pid=" in (tmp_path / "runs" / "r" / "workers.log").read_text()
    status = json.loads((tmp_path / "runs" / "r" / "status.json").read_text())  # what `flexgrpo status` shows
    assert status["status"] == "failed" and status["failure"].startswith("reward worker: JudgeStartError"), status
