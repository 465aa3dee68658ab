"""`flexgrpo status`, `command` and `audit` against a real Redis: live runs, runs whose lease lapsed, and finished
runs whose Redis is gone (status from status.json, audit from a copy of the append-only file)."""

import json
import threading
import time

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane, Heartbeat, write_status_file
from orchestration.cli import main
from orchestration.driver import _record_final_status

OWNER = {"host": "node-a", "pid": 4242, "started": 1.0}


@pytest.fixture
def live_run(tmp_path):
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    server = EmbeddedRedis(run_dir / "redis")
    url = server.start()
    (run_dir / "redis_url").write_text(url + "\n")
    control = ControlPlane(url, "myrun")
    control.register_run({"run": {"name": "myrun"}})
    try:
        yield run_dir, control, server
    finally:
        server.stop()


def answer_commands(control: ControlPlane, outcomes: dict[str, tuple[str, str]]) -> threading.Thread:
    """A stand-in driver: answers each command by op with (status, reason), until every op was answered."""

    def loop() -> None:
        pending = dict(outcomes)
        while pending:
            for command in control.take_commands():
                control.record_outcome(command.id, *pending.pop(command.op))
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_status_shows_lease_heartbeats_and_rejected_commands(live_run, capsys):
    run_dir, control, server = live_run
    control.acquire_lease(OWNER, ttl_s=0.5)
    control.update_run(status="running", step=3)
    beat = Heartbeat(server.url, "myrun", "rollout-0", period_s=0.1).start()
    control.redis.rpush("flexgrpo:run:myrun:commands", b"\xff garbage")
    control.take_commands()
    time.sleep(0.2)
    assert main(["status", str(run_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "running" and shown["step"] == "3" and shown["lease"]["owner"] == OWNER
    assert shown["heartbeats"]["rollout-0"]["age_s"] < 1 and shown["heartbeats"]["rollout-0"]["pid"] > 0
    assert shown["rejected_commands"][0]["reason"].startswith("not UTF-8 text")
    assert "config" not in shown
    beat.stop()
    time.sleep(0.6)  # the lease lapses: the job is not running any more, whatever its status field says
    assert main(["status", str(run_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "lost" and " s ago, at " in shown["last_beat"] and shown["lease"] is None


def test_command_waits_for_the_outcome_and_exits_by_it(live_run, capsys):
    run_dir, control, _ = live_run
    control.acquire_lease(OWNER, ttl_s=60)
    answering = answer_commands(control, {"checkpoint": ("done", ""), "pause": ("rejected", "already paused")})
    assert main(["command", str(run_dir), "checkpoint", "--timeout", "10"]) == 0
    assert capsys.readouterr().out.strip().endswith("(checkpoint): done")
    assert main(["command", str(run_dir), "pause", "--timeout", "10"]) == 1
    assert capsys.readouterr().out.strip().endswith("(pause): rejected: already paused")
    answering.join()
    assert main(["command", str(run_dir), "stop", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert "no outcome for command" in err and len(err.strip().splitlines()) == 1
    assert main(["command", str(run_dir), "resume", "--no-wait"]) == 0
    assert [c.op for c in control.take_commands()] == ["stop", "resume"]


def test_swap_reward_sends_the_checked_specs(live_run, tmp_path, capsys):
    run_dir, control, _ = live_run
    control.acquire_lease(OWNER, ttl_s=60)
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text("- name: jpeg_incompressibility\n  weight: 2.0\n")
    assert main(["command", str(run_dir), "swap_reward", "--rewards", str(rewards), "--no-wait"]) == 0
    (command,) = control.take_commands()
    assert command.args == {"rewards": [{"name": "jpeg_incompressibility", "weight": 2.0}]}


def test_status_of_a_finished_run_falls_back_to_status_json(live_run, capsys):
    run_dir, control, server = live_run
    control.acquire_lease(OWNER, ttl_s=60)
    control.update_run(status="running", step=7)
    write_status_file(run_dir, control.status())  # the driver's last write before it was killed
    server.process.kill()
    server.process.wait()
    assert main(["status", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "is not running" in captured.err and len(captured.err.strip().splitlines()) == 1
    shown = json.loads(captured.out)
    assert shown["status"] == "lost" and shown["step"] == "7" and shown["last_beat"].startswith("20")


def test_a_job_that_trained_every_step_then_failed_is_recorded_failed(live_run, capsys):
    """An error after the loop finished (writing the final weights, say) fails the job: status.json must not
    say "finished", which would let the same command take the run as done and skip what is missing."""
    run_dir, control, _ = live_run
    _record_final_status(control, run_dir, "finished", OSError("disk full"))
    assert main(["status", str(run_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "failed" and "disk full" in shown["failure"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_audit_of_a_live_run_and_of_a_finished_one(live_run, capsys):
    run_dir, control, server = live_run
    control.ledger_queue(["g1", "g2", "g3"])
    for g in ("g1", "g2"):
        control.ledger_sampled(g, "rollout-0", 0)
        control.ledger_scored(g, 0)
    control.ledger_commit_step(0, ["g1", "g2"])
    control.ledger_dropped("g3", "run_end")
    assert main(["audit", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "groups trained:       2" in out and "groups dropped:       1 (run_end: 1)" in out
    assert "audit passed" in out
    control.ledger_queue(["g4"])  # a group admitted, not yet trained
    control.update_run(status="stopped")
    assert main(["audit", str(run_dir)]) == 0  # a stopped run queues it again when it resumes
    assert "groups pending:       1 (queued again on resume) (g4)" in capsys.readouterr().out
    control.update_run(status="finished")  # ... but in a finished run it is lost
    server.stop()  # the job ended: its Redis is gone
    files_before = sorted((p.name, p.stat().st_mtime_ns) for p in (run_dir / "redis").iterdir())
    assert main(["audit", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert "groups lost:          1 (g4)" in captured.out and "audit FAILED" in captured.out
    assert "not running" in captured.err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (run_dir / "redis").iterdir()) == files_before
