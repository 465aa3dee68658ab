"""`flexgrpo eval RUN_DIR` compares a finished run's final LoRA with its starting policy on the run's pools, with
the run's settings; `flexgrpo eval --baseline MODEL --candidate MODEL|CHECKPOINT [--candidate-lora DIR]` compares
any two policies, as a user runs it (a shell with only PATH and HOME). Both write eval.json with per-reward win
rates, intervals, per-tag figures, pointwise means and the pinned sampler settings, a Markdown table and
side-by-side grids; a policy against itself wins exactly half; bad input is one line and exit code 2. One trained
run serves every evaluation here."""

import json
from pathlib import Path

import pytest
import torch

from flexgrpo.records import VersusStart
from orchestration.cli import main
from orchestration.driver import train
from orchestration.eval_run import EvalInputError, markdown, read_prompt_file, summarize
from tests.conftest import tiny_config
from tests.user_shell import FLEXGRPO, run_in_clean_shell

SHORT = ["sampler.eval_num_steps=4", "eval.samples_per_prompt=1"]  # the pinned settings checked below


@pytest.fixture(scope="module")
def inputs(ray_local, tmp_path_factory) -> dict[str, Path]:
    """A finished tiny LoRA run (one step, a large learning rate, its own evaluation rewards; trained in this
    process, one evaluation runs as a user runs it), a tagged prompt file and a rewards file."""
    root = tmp_path_factory.mktemp("eval2")
    train(
        tiny_config(
            f"run.output_dir={root}",
            "run.name=trained",
            "run.num_steps=1",
            "grpo.groups_per_step=1",
            "grpo.group_size=4",
            "sampler.num_steps=4",
            "learner.lr=0.05",
            "eval.every=0",
            "eval.rewards=[{name: jpeg_compressibility_pairwise}, {name: jpeg_compressibility}]",
        )
    )
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": "a red cube", "tag": "colors"}, {"prompt": "two cats", "tag": "counting"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = root / "rewards.yaml"
    rewards.write_text("- name: jpeg_compressibility_pairwise\n- name: jpeg_compressibility\n")
    return {"root": root, "run": root / "trained", "prompts": prompts, "rewards": rewards}


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


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    (tmp_path / "no_adapter").mkdir()
    base = ["eval", "--baseline", "tiny-sd3", "--out", str(tmp_path / "out")]
    cases = [
        (["--candidate", str(tmp_path / "missing"), "--prompts", str(prompts)], "is not a folder that exists"),
        (["--candidate-lora", str(tmp_path / "no_adapter"), "--prompts", str(prompts)], "holds no LoRA adapter"),
        (["--candidate-lora", str(tmp_path / "missing"), "--prompts", str(prompts)], "is not a folder"),
        (["--candidate", "tiny-sd3", "--prompts", str(empty)], "holds 0 prompts"),
        (["--candidate", "tiny-sd3"], "--prompts FILE is needed"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["eval", "--baseline", "tiny-sd3", "--candidate", "tiny-sd3", "--prompts", str(prompts)]) == 2
    assert "--out DIR is needed" in capsys.readouterr().err


@pytest.mark.slow
def test_a_runs_lora_against_the_plain_model_and_a_model_against_itself(inputs):
    run, out = inputs["run"], inputs["root"] / "lora_vs_plain"
    common = ["--prompts", str(inputs["prompts"]), "--rewards", str(inputs["rewards"]), *SHORT]
    checkpoint = next((run / "checkpoints").glob("step_*"))
    done = run_in_clean_shell(
        [FLEXGRPO, "eval", "--baseline", "tiny-sd3", "--candidate", str(checkpoint), "--out", str(out), *common]
    )
    assert "| jpeg_compressibility_pairwise | all | 2 |" in done.stdout
    report = json.loads((out / "eval.json").read_text())
    judge = report["rewards"]["jpeg_compressibility_pairwise"]
    assert judge["pairwise"] and judge["n"] == 2 and len(judge["ci95"]) == 2
    assert 0 <= judge["ci95"][0] <= judge["win_rate"] <= judge["ci95"][1] <= 1
    assert sorted(judge["per_tag"]) == ["colors", "counting"] and judge["per_tag"]["colors"]["n"] == 1
    point = report["rewards"]["jpeg_compressibility"]
    assert point["candidate_mean"] != point["baseline_mean"]  # the run's LoRA was loaded into the candidate
    settings = report["settings"]
    assert settings["sampler"] == {"kind": "ode", "num_steps": 4, "guidance_scale": 1.0}
    assert [(g["prompt"], g["seed"], g["tag"]) for g in settings["groups"]] == [
        ("a red cube", 0, "colors"),
        ("two cats", 1, "counting"),
    ]
    assert settings["baseline"] == {"family": "sd3", "model": "tiny-sd3", "transformer": None, "lora": None}
    assert settings["candidate"]["lora"] == str(checkpoint / "lora")
    assert (out / "eval.md").is_file() and (out / "pairs_001.png").is_file()

    same = inputs["root"] / "plain_vs_plain"  # in this process: the user's path ran above
    assert main(["eval", "--baseline", "tiny-sd3", "--candidate", "tiny-sd3", "--out", str(same), *common]) == 0
    report = json.loads((same / "eval.json").read_text())
    judge, point = report["rewards"]["jpeg_compressibility_pairwise"], report["rewards"]["jpeg_compressibility"]
    assert judge["win_rate"] == 0.5 and judge["ci95"] == [0.5, 0.5]  # identical samples: every pair a tie
    assert point["delta"] == 0.0 and point["candidate_mean"] == point["baseline_mean"]


@pytest.mark.slow
def test_eval_of_a_finished_run_writes_win_rates_per_tag(inputs, tmp_path, capsys):
    run = inputs["run"]
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "a red cube", "tag": "colors"}, {"prompt": "a blue ball", "tag": "colors"}]
    rows += [{"prompt": "two cats", "tag": "counting"}, {"prompt": "three dogs", "tag": "counting"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    assert main(["eval", str(run), "--prompts", str(bad)]) == 2
    assert "has no string field 'prompt'" in capsys.readouterr().err

    assert main(["eval", str(run), "--prompts", str(prompts)]) == 0
    out = run / "eval"
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
