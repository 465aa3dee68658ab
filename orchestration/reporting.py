"""Run outputs a person reads: metrics.jsonl, TensorBoard events (and Weights & Biases when configured), sample
grids captioned with their prompts, and a reward curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


CAPTION_HEIGHT = 12  # pixels of the prompt strip above each row of a grid


def caption_rows(grid: np.ndarray, captions: list[str], row_height: int) -> np.ndarray:
    """A strip with each row's prompt above that row. grid [R*H, W, 3] -> [R*(H+CAPTION_HEIGHT), W, 3]"""
    font = ImageFont.load_default()
    rows = []
    for r, caption in enumerate(captions):
        strip = Image.new("RGB", (grid.shape[1], CAPTION_HEIGHT), "white")
        ImageDraw.Draw(strip).text((2, 0), caption, fill="black", font=font)
        rows += [np.asarray(strip), grid[r * row_height : (r + 1) * row_height]]
    return np.concatenate(rows)


def plot_reward_curve(rows: list[dict], path: Path, key: str = "reward_mean") -> Path:
    """A line chart of `key` over the steps (a moving average of 10 in dark blue over the raw values)."""
    width, height, pad = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [(row["step"], row[key]) for row in rows if key in row]
    draw.text((pad, 10), f"{key} per step", fill="black", font=ImageFont.load_default())
    if len(points) >= 2:
        steps, values = zip(*points, strict=True)
        lo, hi = min(values), max(values)
        span_x, span_y = max(1, steps[-1] - steps[0]), (hi - lo) or 1.0

        def xy(step: float, value: float) -> tuple[float, float]:
            x = pad + (step - steps[0]) / span_x * (width - 2 * pad)
            return x, height - pad - (value - lo) / span_y * (height - 2 * pad)

        smooth = [sum(values[max(0, i - 9) : i + 1]) / len(values[max(0, i - 9) : i + 1]) for i in range(len(values))]
        draw.line([xy(s, v) for s, v in points], fill=(160, 190, 230), width=1)
        draw.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=(20, 40, 140), width=2)
        font = ImageFont.load_default()
        draw.text((4, pad - 6), f"{hi:.3g}", fill="black", font=font)
        draw.text((4, height - pad - 6), f"{lo:.3g}", fill="black", font=font)
        draw.text((pad, height - pad + 6), f"step {steps[0]}", fill="black", font=font)
        draw.text((width - pad - 60, height - pad + 6), f"step {steps[-1]}", fill="black", font=font)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="gray")
    image.save(path)
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, run_config: dict | None = None) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._wandb = None
        if cfg.wandb.project and cfg.wandb.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                mode=cfg.wandb.mode,
                dir=str(run_dir),
                name=run_dir.name,
                id=run_dir.name,
                resume="allow",
                config=run_config,
            )

    def plot_rewards(self) -> Path:
        """samples/reward_curve.png from metrics.jsonl (at the end of a run and at each checkpoint)."""
        (self.run_dir / "samples").mkdir(exist_ok=True)
        return plot_reward_curve(read_metrics(self.run_dir), self.run_dir / "samples" / "reward_curve.png")

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
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[torch.Tensor], captions: list[str], name: str = "step") -> Path:
        """Save a grid of samples (one row per group, its prompt above it) as samples/<name>_<step>.png (videos:
        their first frames, and the whole videos as an animated .gif beside it), the captions in a .txt beside it."""
        grid = media_grid(rows)
        height = rows[0].shape[-3]
        grid = (
            np.stack([caption_rows(f, captions, height) for f in grid])
            if grid.ndim == 4
            else caption_rows(grid, captions, height)
        )
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
        if self._wandb is not None:
            import wandb

            self._wandb.log({f"samples/{name}": wandb.Image(first, caption=" | ".join(captions))}, step=step)
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
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
