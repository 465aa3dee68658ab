"""The pipeline's choice of worker (orchestration/pipeline.WorkerChoice): the fewest calls outstanding first, ties
to the worker given a group longest ago (a new one first), none when all are at the limit; looking does not count
as giving (a rollout worker picked while no reward worker is live keeps its place)."""

from orchestration.worker_choice import WorkerChoice


def test_fewest_outstanding_first_then_longest_ago():
    choice = WorkerChoice()
    assert choice.pick("rollout", {0: 1, 1: 0, 2: 1}) == 1
    assert choice.pick("rollout", {0: 0, 1: 0}) == 0  # never given: the lowest slot
    choice.given("rollout", 0)
    assert choice.pick("rollout", {0: 0, 1: 0}) == 1
    choice.given("rollout", 1)
    assert choice.pick("rollout", {0: 0, 1: 0, 2: 0}) == 2  # a new worker before those given a group
    choice.given("rollout", 2)
    assert choice.pick("rollout", {0: 0, 1: 0, 2: 0}) == 0
    assert choice.pick("reward", {0: 0, 1: 0}) == 0  # pools keep their own order


def test_none_when_no_worker_is_live_or_all_are_at_the_limit():
    choice = WorkerChoice()
    assert choice.pick("rollout", {}) is None
    assert choice.pick("rollout", {0: 2, 1: 2}, limit=2) is None
    assert choice.pick("rollout", {0: 2, 1: 1}, limit=2) == 1
    assert choice.pick("reward", {0: 9}) == 0  # no limit


def test_a_pick_that_was_not_given_keeps_the_workers_place():
    choice = WorkerChoice()
    choice.given("rollout", 1)
    assert choice.pick("rollout", {0: 0, 1: 0}) == 0
    assert choice.pick("rollout", {0: 0, 1: 0}) == 0  # picked twice, never given: still first
    choice.given("rollout", 0)
    assert choice.pick("rollout", {0: 0, 1: 0}) == 1
