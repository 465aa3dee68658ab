"""With several learner ranks, the death of one is seen even while another is busy (in a collective that waits
for the dead one, or, here, held in a checkpoint): the ranks are asked at once, not one after the other. Asked
in turn, the busy rank 0 went first; its answer timed out and that error ended the job."""

from __future__ import annotations

import time

import pytest
import ray

from tests.conftest import tiny_config, trainer

pytestmark = pytest.mark.slow


def test_rank_1_killed_while_rank_0_is_held_in_a_checkpoint(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=ranks",
        "cluster.learner.num_workers=2",
        "cluster.learner.gpus_per_worker=0.5",
        "holds.checkpoint_s=120",  # longer than the 60 s a busy rank is given to answer
    )
    with trainer(cfg, tmp_path / "ranks") as run:
        rank_0, rank_1 = run.roles.learner.actors
        saving = [rank.save_checkpoint.remote(str(tmp_path / "ckpt")) for rank in (rank_0, rank_1)]
        time.sleep(5)  # both ranks inside the checkpoint's hold
        assert ray.wait(saving, timeout=0)[0] == []
        ray.kill(rank_1, no_restart=True)
        start = time.monotonic()
        assert run.recovery.learner_died()
        assert time.monotonic() - start < 30
