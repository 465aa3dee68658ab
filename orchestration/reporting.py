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


PANEL_WIDTH, PANEL_HEIGHT, PAD = 640, 360, 40
COLOURS = ((20, 40, 140), (200, 60, 30), (30, 140, 60), (150, 60, 160), (200, 150, 20), (20, 150, 170))
Point = tuple[float, float, float | None, float | None]  # x, y, interval low, interval high


def _panel(title: str, series: dict[str, list[Point]], level: float | None) -> Image.Image:
    """One chart: a line per series (in its colour, named in the legend), interval bars where given, and a dashed
    line at `level` (no change)."""
    image = Image.new("RGB", (PANEL_WIDTH, PANEL_HEIGHT), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    draw.text((PAD, 8), title, fill="black", font=font)
    points = [p for ps in series.values() for p in ps]
    if points:
        xs = [p[0] for p in points]
        ys = [v for p in points for v in p[1:] if v is not None] + ([level] if level is not None else [])
        x0, span_x = min(xs), max(1.0, max(xs) - min(xs))
        lo, hi = min(ys), max(ys)
        span_y = (hi - lo) or 1.0

        def xy(x: float, y: float) -> tuple[float, float]:
            return (
                PAD + (x - x0) / span_x * (PANEL_WIDTH - 2 * PAD),
                PANEL_HEIGHT - PAD - (y - lo) / span_y * (PANEL_HEIGHT - 2 * PAD),
            )

        if level is not None:
            y = xy(x0, level)[1]
            for x in range(PAD, PANEL_WIDTH - PAD, 8):
                draw.line([(x, y), (x + 4, y)], fill="gray")
        for n, (name, ps) in enumerate(series.items()):
            colour = COLOURS[n % len(COLOURS)]
            if len(ps) > 1:
                draw.line([xy(p[0], p[1]) for p in ps], fill=colour, width=2)
            for x, y, low, high in ps:
                cx, cy = xy(x, y)
                draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
                if low is not None and high is not None:
                    draw.line([xy(x, low), xy(x, high)], fill=colour, width=1)
            draw.text((PANEL_WIDTH - PAD - 230, 8 + 11 * n), name[:40], fill=colour, font=font)
        draw.text((4, PAD - 6), f"{hi:.3g}", fill="black", font=font)
        draw.text((4, PANEL_HEIGHT - PAD - 6), f"{lo:.3g}", fill="black", font=font)
        draw.text((PAD, PANEL_HEIGHT - PAD + 6), f"step {x0:g}", fill="black", font=font)
        draw.text((PANEL_WIDTH - PAD - 60, PANEL_HEIGHT - PAD + 6), f"step {x0 + span_x:g}", fill="black", font=font)
    draw.rectangle([PAD, PAD, PANEL_WIDTH - PAD, PANEL_HEIGHT - PAD], outline="gray")
    return image


def evaluation_series(rows: list[dict], figure: str) -> dict[str, list[Point]]:
    """Per evaluation reward, `figure` (win_rate_vs_start, delta_vs_start) with its interval, at the learner
    updates the evaluated weights had seen: `eval_before/` at 0, `eval/` of step s at s + 1."""
    series: dict[str, list[Point]] = {}
    for row in rows:
        for key, value in row.items():
            prefix, _, rest = key.partition("/")
            if prefix not in ("eval", "eval_before") or not rest.endswith("/" + figure):
                continue
            x = 0 if prefix == "eval_before" else row["step"] + 1
            series.setdefault(rest.removesuffix("/" + figure), []).append(
                (x, value, row.get(f"{key}_lo"), row.get(f"{key}_hi"))
            )
    return series


def plot_reward_curve(rows: list[dict], path: Path, key: str = "reward_mean") -> Path:
    """The training reward per step (a moving average of 10 over the raw values) and its components; below it,
    when the run evaluated, the evaluation against the starting policy: the win rates of pairwise judges (0.5: no
    change) and the change of pointwise scorers, each with its 95% interval over prompts."""
    raw = [(row["step"], row[key], None, None) for row in rows if key in row]
    smooth = [
        (s, sum(p[1] for p in raw[max(0, i - 9) : i + 1]) / len(raw[max(0, i - 9) : i + 1]), None, None)
        for i, (s, *_) in enumerate(raw)
    ]
    training = {f"{key} (mean of 10)": smooth, key: raw}
    components = sorted({k for row in rows for k in row if k.startswith("reward/") and k.count("/") == 1})
    components = [c for c in components if c not in NOT_REWARDS]
    if len(components) > 1:  # several rewards: each beside the combined one
        training |= {c: [(row["step"], row[c], None, None) for row in rows if c in row] for c in components}
    panels = [_panel(f"training: {key} per step", training, None)]
    for figure, level in (("win_rate_vs_start", 0.5), ("delta_vs_start", 0.0)):
        if series := evaluation_series(rows, figure):
            panels.append(_panel(f"evaluation: {figure} (95% interval over prompts)", series, level))
    image = Image.new("RGB", (PANEL_WIDTH, PANEL_HEIGHT * len(panels)), "white")
    for i, panel in enumerate(panels):
        image.paste(panel, (0, PANEL_HEIGHT * i))
    image.save(path)
    return path


# reward/ figures that are not a reward model's value
NOT_REWARDS = {"reward/std", "reward/version", "reward/unparsed", "reward/requests", "reward/parse_rate"}
NOT_REWARDS |= {"reward/first_position_win_rate", "reward/groups_per_s", "reward/idle_frac", "reward/queue_depth"}


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
