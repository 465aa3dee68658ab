"""RewardWorker.swap mid-stream: every scored group carries the version of the one spec that scored it; the
old models are released; a spec that cannot be built leaves the running one in place."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from flexgrpo.config import ConfigError, RewardSpec
from flexgrpo.records import MediaGroup, ScoredGroup
from reward_workers.reward_worker import RewardWorker

JPEG = [RewardSpec(name="jpeg_compressibility")]


def media_group(index: int) -> MediaGroup:
    media = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(index))
    return MediaGroup(group_id=f"s0-g{index}", prompt="a red cat", policy_version=index // 2, media=media)


def dead_judge_spec() -> RewardSpec:
    """A Think judge whose server is gone: it scores ties and counts them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return RewardSpec(
        name="unifiedreward_think",
        model="judge",
        backend="http",
        url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        weight=2.0,
    )


def test_groups_carry_the_version_that_scored_them() -> None:
    worker = RewardWorker(JPEG, version=0)
    scored: list[ScoredGroup] = []
    for index in range(6):
        if index == 3:
            assert worker.swap([RewardSpec(name="jpeg_incompressibility", weight=0.5), dead_judge_spec()], 1) == 1
        scored.append(worker.score(media_group(index)))
    assert [s.reward_version for s in scored] == [0, 0, 0, 1, 1, 1]
    assert [s.policy_version for s in scored] == [0, 0, 1, 1, 2, 2]
    assert all(set(s.components) == {"jpeg_compressibility"} for s in scored[:3])
    assert all(set(s.components) == {"jpeg_incompressibility", "unifiedreward_think"} for s in scored[3:])
    late = scored[3]
    torch.testing.assert_close(late.components["unifiedreward_think"], torch.full((3,), 0.5))  # counted ties
    torch.testing.assert_close(late.rewards, 0.5 * late.components["jpeg_incompressibility"] + 2.0 * 0.5)
    assert late.unparsed == 3 and late.requests == 3  # 3 pairs judged
    assert {d["reward"] for d in late.details} == {"unifiedreward_think"}


def test_swap_releases_the_old_models() -> None:
    worker = RewardWorker([dead_judge_spec()], version=0)
    judge = worker.models[0]
    worker.score(media_group(0))
    worker.swap(JPEG, version=1)
    assert judge.backend.client.is_closed  # type: ignore[attr-defined]
    assert worker.score(media_group(1)).reward_version == 1


def test_a_spec_that_cannot_load_leaves_the_running_one() -> None:
    worker = RewardWorker(JPEG, version=4)
    with pytest.raises(ConfigError, match="must be one of"):
        worker.swap([RewardSpec(name="jpeg_compresibility")], version=5)
    built_first = dead_judge_spec()
    with pytest.raises(ConfigError, match="clip_score model '/nonexistent/clip' is not a folder"):
        worker.swap([built_first, RewardSpec(name="clip_score", model="/nonexistent/clip")], version=5)
    assert worker.version == 4 and [s.name for s in worker.specs] == ["jpeg_compressibility"]
    assert worker.score(media_group(0)).reward_version == 4


def test_swap_while_another_thread_streams_groups() -> None:
    worker = RewardWorker(JPEG, version=0)
    scored: list[ScoredGroup] = []
    stop = threading.Event()

    def stream() -> None:
        index = after_stop = 0
        while after_stop < 3:  # until 3 groups after the swap returned
            after_stop += stop.is_set()
            scored.append(worker.score(media_group(index)))
            index += 1

    thread = threading.Thread(target=stream)
    thread.start()
    while len(scored) < 5:
        threading.Event().wait(0.01)
    worker.swap([RewardSpec(name="jpeg_incompressibility")], version=1)
    stop.set()
    thread.join(timeout=60)
    versions = [s.reward_version for s in scored]
    assert versions == sorted(versions) and versions[0] == 0 and versions[-1] == 1
    for s in scored:  # no group mixes specs
        expected = {0: {"jpeg_compressibility"}, 1: {"jpeg_incompressibility"}}[s.reward_version]
        assert set(s.components) == expected
