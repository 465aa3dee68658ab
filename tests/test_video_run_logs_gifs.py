"""A text-to-video job (the tiny Wan policy) through the whole Ray loop: video groups reach the reward pool,
training runs on-policy, and the sample grids are written as first-frame PNGs and animated GIFs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from orchestration.driver import train
from orchestration.reporting import CAPTION_HEIGHT, media_grid
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_media_grid_of_videos_has_a_grid_per_frame():
    a = torch.full((2, 3, 4, 5, 3), 7, dtype=torch.uint8)  # 2 samples, 3 frames of 4x5
    b = torch.full((1, 3, 4, 5, 3), 9, dtype=torch.uint8)
    grid = media_grid([a, b])
    assert grid.shape == (3, 8, 10, 3)
    assert (grid[:, :4] == 7).all() and (grid[:, 4:, :5] == 9).all() and (grid[:, 4:, 5:] == 0).all()
    assert media_grid([a[:, 0]]).shape == (4, 10, 3)


def test_tiny_wan_job_trains_and_logs_videos(ray_local, tmp_path):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=video",
        "run.num_steps=2",
        "policy.family=wan",
        "policy.model=tiny-wan",
        "policy.height=32",
        "policy.width=32",
        "policy.num_frames=5",
        "grpo.groups_per_step=1",
        "grpo.group_size=3",
        "sampler.noise_level=0.7",
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "video" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss/ratio_max_dev"] < 1e-5 for r in rows)
    gif = Image.open(tmp_path / "video" / "samples" / "step_00001.gif")
    assert gif.n_frames == 5 and gif.size == (3 * 32, CAPTION_HEIGHT + 32)  # the prompt above the row
    png = np.asarray(Image.open(tmp_path / "video" / "samples" / "step_00001.png"))
    assert png.shape == (CAPTION_HEIGHT + 32, 96, 3)
    assert (png[:CAPTION_HEIGHT] < 128).any() and (png[:CAPTION_HEIGHT] > 128).any(), "the prompt, dark on white"
