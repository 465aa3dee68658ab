"""`flexgrpo eval RUN_DIR` compares a finished run's final LoRA with its starting policy on the run's pools:
eval.json with per-reward, per-tag win rates and intervals, pointwise means, the pinned sampler settings, a
Markdown table and side-by-side grids; bad input is one line."""

import json

import pytest
import torch

from flexgrpo.records import VersusStart
from orchestration.cli import main
from orchestration.driver import train
from orchestration.eval_run import EvalInputError, markdown, read_prompt_file, summarize
from tests.conftest import tiny_config


def test_prompt_files_and_the_report_per_tag(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\na dog\n")
    assert read_prompt_file(text) == [("a cat", None), ("a dog", None)]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "tag": "animals"}\n{"prompt": "a cube"}\nnot json\n')
    with pytest.raises(EvalInputError, match=r"p.jsonl:3 is not JSON"):
        read_prompt_file(jsonl)
    wins = [[1.0, 1.0], [1.0, 0.5], [0.0, 0.5]]
    results = [VersusStart(f"eval-{i}", "judge", True, {"": torch.tensor(w)}, {}) for i, w in enumerate(wins)]
    results += [
        VersusStart(f"eval-{i}", "clip", False, {"": torch.tensor([2.0 + i])}, {"": torch.tensor([1.0])})
        for i in range(3)
    ]
    report = summarize(results, {"eval-0": "a", "eval-1": "a", "eval-2": "b"}, {"sampler": {}})
    judge, clip = report["rewards"]["judge"], report["rewards"]["clip"]
    assert judge["win_rate"] == pytest.approx(2 / 3) and judge["n"] == 3 and judge["per_tag"]["a"]["n"] == 2
    assert judge["per_tag"]["a"]["win_rate"] == pytest.approx(0.875) and judge["per_tag"]["b"]["win_rate"] == 0.25
    assert (clip["baseline_mean"], clip["candidate_mean"], clip["delta"]) == (1.0, 3.0, 2.0)
    assert "| judge | b | 1 | 0.250 |" in markdown(report)


def test_bad_prompt_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_of_a_finished_run_writes_win_rates_per_tag(ray_local, tmp_path, capsys):
    cfg = tiny_config(
        f"run.output_dir={tmp_path}",
        "run.name=done",
        "run.num_steps=2",
        "grpo.groups_per_step=2",
        "grpo.group_size=4",
        "learner.lr=0.05",
        "eval.rewards=[{name: jpeg_compressibility_pairwise}, {name: jpeg_compressibility}]",
    )
    train(cfg)
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "a red cube", "tag": "colors"}, {"prompt": "a blue ball", "tag": "colors"}]
    rows += [{"prompt": "two cats", "tag": "counting"}, {"prompt": "three dogs", "tag": "counting"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    assert main(["eval", str(tmp_path / "done"), "--prompts", str(bad)]) == 2
    assert "has no string field 'prompt'" in capsys.readouterr().err

    assert main(["eval", str(tmp_path / "done"), "--prompts", str(prompts)]) == 0
    out = tmp_path / "done" / "eval"
    report = json.loads((out / "eval.json").read_text())
    judge = report["rewards"]["jpeg_compressibility_pairwise"]
    assert 0 <= judge["ci95"][0] <= judge["win_rate"] <= judge["ci95"][1] <= 1 and judge["n"] == 4
    assert sorted(judge["per_tag"]) == ["colors", "counting"] and judge["per_tag"]["colors"]["n"] == 2
    point = report["rewards"]["jpeg_compressibility"]
    assert point["candidate_mean"] != point["baseline_mean"]  # the trained LoRA was loaded for the candidate
    assert point["delta"] == pytest.approx(point["candidate_mean"] - point["baseline_mean"], abs=1e-5)
    settings = report["settings"]
    assert settings["sampler"] == {"kind": "ode", "num_steps": 16, "guidance_scale": 1.0}
    assert [g["tag"] for g in settings["groups"]] == ["colors", "colors", "counting", "counting"]
    assert "| jpeg_compressibility_pairwise | counting | 2 |" in (out / "eval.md").read_text()
    assert (out / "pairs_000.png").is_file() and (out / "pairs_003.png").is_file()
