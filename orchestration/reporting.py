"""Run outputs a person reads: metrics.jsonl, TensorBoard events, and sample grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flexgrpo.config import LoggingConfig


def media_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """One row per group, one column per sample, padded with black.

    rows: [G, H, W, 3] images -> [R*H, G*W, 3]; [G, F, H, W, 3] videos -> [F, R*H, G*W, 3] (a grid per frame).
    """
    videos = [r if r.dim() == 5 else r.unsqueeze(1) for r in rows]  # [G, F, H, W, 3]
    width = max(r.shape[0] for r in videos)
    padded = [torch.cat([r, r.new_zeros((width - r.shape[0], *r.shape[1:]))]) for r in videos]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in padded], dim=1)  # [F, R*H, G*W, 3]
    return grid.numpy() if rows[0].dim() == 5 else grid[0].numpy()


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def forget_from(self, step: int) -> None:
        """Drop metrics rows of `step` and later (a resumed run redoes those steps)."""
        self._jsonl.close()
        path = self.run_dir / "metrics.jsonl"
        kept = [row for row in read_metrics(self.run_dir) if row["step"] < step]
        path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        self._jsonl = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step} | metrics) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)

    def log_samples(self, step: int, rows: list[torch.Tensor], captions: list[str], name: str = "step") -> Path:
        """Save a grid of samples (one row per group) as samples/<name>_<step>.png (videos: their first frames,
        and the whole videos as an animated .gif beside it), with the captions in a .txt beside it."""
        grid = media_grid(rows)
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}_{step:05d}.png"
        first = grid[0] if grid.ndim == 4 else grid
        Image.fromarray(first).save(path)
        if grid.ndim == 4:
            frames = [Image.fromarray(frame) for frame in grid]
            frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=125, loop=0)
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        if self._tb is not None:
            self._tb.add_image(f"samples/{name}", first, step, dataformats="HWC")
        return path

    def log_judgements(self, step: int, details: dict[str, list[dict]]) -> Path | None:
        """The judges' parsed replies of a step (group id -> details), beside that step's sample grid."""
        if not details:
            return None
        path = self.run_dir / "samples" / f"step_{step:05d}.judgements.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(details, indent=1), encoding="utf-8")
        return path

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
