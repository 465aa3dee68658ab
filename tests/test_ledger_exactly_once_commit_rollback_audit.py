"""The ledger in a real Redis: the group state machine, atomic step commits, rollback on resume, the audit that
tells lost and twice-trained groups from a clean history, and settling old groups out of Redis without changing
what the audit says."""

import json
from dataclasses import replace

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import ControlPlane, LedgerError


@pytest.fixture
def control(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        yield ControlPlane(url, "ledger")


def train_groups(control: ControlPlane, step: int, groups: list[str], policy_version: int = 0) -> None:
    for g in groups:
        control.ledger_sampled(g, "rollout-0", policy_version)
        control.ledger_scored(g, 0)
    control.ledger_commit_step(step, groups)


def test_a_group_walks_queued_sampled_scored_trained_with_its_versions(control):
    control.ledger_queue(["g000001", "g000002"])
    control.ledger_sampled("g000001", "rollout-1", 3)
    control.ledger_scored("g000001", 2)
    control.ledger_commit_step(0, ["g000001"])
    control.ledger_dropped("g000002", "run_end")
    states = control.ledger_states()
    assert states["g000001"] == {
        "state": "trained",
        "worker": "rollout-1",
        "policy_version": 3,
        "reward_version": 2,
        "step": 0,
    }
    assert states["g000002"] == {"state": "dropped", "reason": "run_end"}
    assert control.run_info()["step"] == "1"
    assert [(e["group"], e["from"], e["to"]) for e in control.ledger_log()] == [
        ("g000001", "new", "queued"),
        ("g000002", "new", "queued"),
        ("g000001", "queued", "sampled"),
        ("g000001", "sampled", "scored"),
        ("g000001", "scored", "trained"),
        ("g000002", "queued", "dropped"),
    ]


def test_invalid_transitions_raise_and_change_nothing(control):
    control.ledger_queue(["g1"])
    train_groups(control, 0, ["g1"])
    with pytest.raises(LedgerError, match="group g1 cannot become sampled from trained"):
        control.ledger_sampled("g1", "rollout-0", 1)
    with pytest.raises(LedgerError, match="group g1 is already trained, cannot queue it again"):
        control.ledger_queue(["g1"])
    with pytest.raises(LedgerError, match="g9 is not in the ledger"):
        control.ledger_scored("g9", 0)
    with pytest.raises(LedgerError, match="g1 cannot become dropped from trained"):
        control.ledger_dropped("g1", "oops")
    assert control.ledger_states()["g1"]["state"] == "trained" and len(control.ledger_log()) == 4
    control.ledger_queue(["g2"])
    with pytest.raises(LedgerError, match="group g2 cannot become scored from queued"):
        control.ledger_scored("g2", 0)  # a group is scored only after it was sampled
    assert control.ledger_states()["g2"] == {"state": "queued"}


def test_commit_is_all_or_nothing(control):
    control.ledger_queue(["a", "b", "c"])
    for g in ("a", "b"):
        control.ledger_sampled(g, "rollout-0", 0)
        control.ledger_scored(g, 0)
    control.ledger_sampled("c", "rollout-0", 0)  # not scored yet
    with pytest.raises(LedgerError, match="c cannot be trained at step 0: it is sampled"):
        control.ledger_commit_step(0, ["a", "b", "c"])
    assert {g: r["state"] for g, r in control.ledger_states().items()} == {"a": "scored", "b": "scored", "c": "sampled"}
    assert control.run_info().get("step") is None  # the run's step did not move either
    control.ledger_commit_step(0, ["a", "b"])
    control.ledger_commit_step(0, ["a", "b"])  # a retried commit (reply lost) is a no-op
    assert [e["to"] for e in control.ledger_log()].count("trained") == 2 and control.run_info()["step"] == "1"


def test_rollback_requeues_what_the_checkpoint_lacks_and_the_audit_passes_after_retraining(control):
    groups = [f"g{i:06d}" for i in range(8)]
    control.ledger_queue(groups)
    for step in range(3):  # steps 0, 1, 2 train two groups each
        train_groups(control, step, groups[2 * step : 2 * step + 2])
    control.ledger_sampled(groups[6], "rollout-0", 3)  # in flight when the job died
    # resume from the checkpoint taken before step 2
    requeued = control.ledger_rollback(2)
    assert requeued == [groups[4], groups[5], groups[6], groups[7]]
    assert control.run_info()["step"] == "2"
    assert {g: r["state"] for g, r in control.ledger_states().items() if g in requeued} == dict.fromkeys(
        requeued, "queued"
    )
    train_groups(control, 2, groups[4:6])
    train_groups(control, 3, groups[6:8])
    report = control.audit(final_step=int(control.run_info()["step"]))
    assert report.ok and report.trained == 8 and report.lost == [] and report.trained_twice == []
    # the log keeps both trainings of groups 4 and 5, and the rollback between them
    trainings = [(e["group"], e["step"]) for e in control.ledger_log() if e["to"] == "trained"]
    assert trainings.count((groups[4], 2)) == 2


def test_audit_counts_dropped_and_finds_lost_groups(control):
    control.ledger_queue(["t", "d1", "d2", "q", "s"])
    train_groups(control, 0, ["t"])
    control.ledger_dropped("d1", "run_end")
    control.ledger_dropped("d2", "reward_failed")
    control.ledger_sampled("s", "rollout-0", 0)
    report = control.audit(final_step=1)
    assert report.trained == 1 and report.dropped == {"run_end": 1, "reward_failed": 1}
    assert report.lost == ["q", "s"] and not report.ok
    # a training beyond the final weights (registry behind the ledger) does not survive either
    assert control.audit(final_step=0).lost == ["q", "s", "t"]


def test_audit_replays_the_log_and_flags_a_second_surviving_training(control):
    control.ledger_queue(["g1", "g2"])
    train_groups(control, 0, ["g1", "g2"])
    assert control.audit(final_step=1).ok
    # a writer that bypassed the state machine (e.g. a second job on the same run) trained g1 again
    event = {"group": "g1", "from": "scored", "to": "trained", "step": 0, "time": 0}
    control.redis.xadd("flexgrpo:run:ledger:ledger_log", {"e": json.dumps(event)})
    report = control.audit(final_step=1)
    assert report.trained_twice == ["g1"] and report.trained == 2 and not report.ok


def test_settled_groups_leave_redis_but_keep_their_verdicts_in_the_audit(control):
    groups = [f"g{i}" for i in range(8)]
    control.ledger_queue(groups)
    train_groups(control, 0, groups[0:2])
    control.ledger_rollback(0)  # g0, g1: trained, undone by a resume, trained again
    train_groups(control, 0, groups[0:2])
    train_groups(control, 1, groups[2:4])
    control.ledger_dropped("g4", "stale")
    train_groups(control, 2, groups[5:7])  # after the checkpoint the settle stops at
    control.ledger_sampled("g7", "rollout-0", 3)  # in flight
    event = {"group": "g2", "from": "scored", "to": "trained", "step": 1, "time": 0}  # a writer that bypassed it
    control.redis.xadd("flexgrpo:run:ledger:ledger_log", {"e": json.dumps(event)})
    gone = json.dumps({"state": "trained", "step": 0})  # a record whose training the log does not show
    control.redis.hset("flexgrpo:run:ledger:groups", "gx", gone)
    before = control.audit(final_step=3, finished=False)
    assert before.trained == 6 and before.trained_twice == ["g2"] and before.pending == ["g7", "gx"]

    assert control.ledger_settle(before_step=2) == 5  # g0-g3 trained before step 2, g4 dropped
    assert set(control.ledger_states()) == {"g5", "g6", "g7", "gx"}  # gx stays for the audit to flag
    assert {e["group"] for e in control.ledger_log()} == {"g5", "g6", "g7"}
    after = control.audit(final_step=3, finished=False)
    assert after == replace(before, settled=5)  # the same verdicts, g2's second training included
    assert control.ledger_settle(before_step=2) == 0  # nothing left to settle
    with pytest.raises(LedgerError, match="group g0 was settled .* cannot become queued"):
        control.ledger_queue(["g0"])  # the state machine still refuses a settled group
    with pytest.raises(LedgerError, match="group g4 was settled .* cannot be trained at step 2"):
        control.ledger_commit_step(2, ["g4"])

    # a resume from the checkpoint of step 2 still requeues what it lacks; the audit still adds up
    assert control.ledger_rollback(2) == ["g5", "g6", "g7"]
    train_groups(control, 2, groups[5:8])
    final = control.audit(final_step=3)
    assert final.trained == 7 and final.dropped == {"stale": 1} and final.trained_twice == ["g2"]
    assert final.lost == ["gx"]


def test_a_long_job_that_settles_as_it_goes_holds_a_bounded_ledger(control):
    per_step, keep, sizes = 4, 40, []
    for step in range(300):
        groups = [f"g{step * per_step + i:06d}" for i in range(per_step)]
        control.ledger_queue(groups)
        train_groups(control, step, groups)
        if step % 20 == 19:  # a checkpoint every 20 steps settles what is more than `keep` steps old
            control.ledger_settle(before_step=step + 1 - keep)
            sizes.append((control.redis.hlen("flexgrpo:run:ledger:groups"), len(control.ledger_log())))
    assert max(sizes) == sizes[-1] == (per_step * keep, 4 * per_step * keep)  # the last `keep` steps, not growing
    report = control.audit(final_step=300)
    assert report.ok and report.trained == 1200 and report.settled == 1200 - per_step * keep


def test_metrics_of_redone_steps_are_forgotten(control):
    for step in range(5):
        control.publish_metrics(step, {"reward_mean": float(step)})
    assert control.forget_metrics_from(3) == 2
    control.publish_metrics(3, {"reward_mean": 30.0})
    assert [(m["step"], m["reward_mean"]) for m in control.read_metrics()] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]
