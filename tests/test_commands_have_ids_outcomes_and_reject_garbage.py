"""Operator commands in a real Redis: each has an id and a recorded outcome; bytes that are not UTF-8, bad JSON
and unknown ops are rejected with a reason (outcome, status list, log) while later good commands come through."""

import json
import logging
import os
import threading

import pytest

from cluster.embedded_redis import EmbeddedRedis
from flexgrpo.control_plane import CommandError, ControlPlane


@pytest.fixture
def control(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as url:
        yield ControlPlane(url, "cmds")


def test_commands_come_in_order_with_ids_and_their_outcomes_are_recorded(control):
    first = control.send_command("pause")
    second = control.send_command("swap_reward", rewards=[{"name": "jpeg_incompressibility"}])
    assert len(first) == 32 and first != second
    taken = control.take_commands()
    assert [(c.id, c.op, c.args) for c in taken] == [
        (first, "pause", {}),
        (second, "swap_reward", {"rewards": [{"name": "jpeg_incompressibility"}]}),
    ]
    assert control.take_commands() == []
    assert control.command_outcome(first) is None
    control.record_outcome(first, "done")
    control.record_outcome(second, "failed", "reward worker 1 could not load the model")
    assert control.command_outcome(first)["status"] == "done"
    assert control.command_outcome(second)["reason"] == "reward worker 1 could not load the model"
    with pytest.raises(ValueError, match="outcome must be one of"):
        control.record_outcome(first, "maybe")
    with pytest.raises(CommandError, match="got 'explode'"):
        control.send_command("explode")


def test_garbage_is_rejected_with_a_reason_and_later_commands_still_come_through(control, caplog):
    key = "flexgrpo:run:cmds:commands"
    control.redis.rpush(key, os.urandom(64) + b"\xff\xfe")  # never valid UTF-8
    control.redis.rpush(key, "{not json")
    control.redis.rpush(key, json.dumps({"id": "c-unknown", "op": "explode", "args": {}}))
    control.redis.rpush(key, json.dumps({"id": "c-args", "op": "stop", "args": [1]}))
    control.redis.rpush(key, json.dumps(["stop"]))
    good = control.send_command("checkpoint")
    with caplog.at_level(logging.WARNING, logger="flexgrpo.control_plane"):
        taken = control.take_commands()
    assert [(c.id, c.op) for c in taken] == [(good, "checkpoint")]
    rejected = control.rejected_commands()  # newest first
    reasons = [r["reason"] for r in reversed(rejected)]
    assert reasons[0].startswith("not UTF-8 text") and reasons[1].startswith("not JSON")
    assert "got 'explode'" in reasons[2] and "args must be a JSON object" in reasons[3]
    assert reasons[4].startswith("not a JSON object")
    assert control.command_outcome("c-unknown")["status"] == "rejected"
    assert "got 'explode'" in control.command_outcome("c-unknown")["reason"]
    assert all(control.command_outcome(r["id"])["status"] == "rejected" for r in rejected)
    assert sum("rejected operator command" in m for m in caplog.messages) == 5


def test_the_rejected_list_is_bounded(control):
    for i in range(30):
        control.redis.rpush("flexgrpo:run:cmds:commands", f"garbage {i}")
    assert control.take_commands() == []
    rejected = control.rejected_commands()
    assert len(rejected) == 20 and rejected[0]["raw"] == "garbage 29"


def test_wait_for_outcome_returns_the_answer_or_times_out(control):
    command_id = control.send_command("checkpoint")

    def driver():
        (command,) = control.take_commands()
        control.record_outcome(command.id, "done")

    timer = threading.Timer(0.3, driver)
    timer.start()
    assert control.wait_for_outcome(command_id, timeout_s=10)["status"] == "done"
    timer.join()
    with pytest.raises(TimeoutError, match=r"no outcome for command \w+ after 0.3 s"):
        control.wait_for_outcome(control.send_command("stop"), timeout_s=0.3)
