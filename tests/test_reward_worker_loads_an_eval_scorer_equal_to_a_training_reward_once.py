"""A reward worker whose evaluation scorers include a training reward (the same spec, the weight aside) builds
that model once and uses it for both; a swap takes the scorer's model again, and retiring the old training spec
closes only the models it built itself."""

import torch

import reward_workers.reward_worker as reward_worker
from flexgrpo.config import RewardSpec
from flexgrpo.records import MediaGroup
from reward_workers.registry import build_reward
from reward_workers.reward_worker import RewardWorker

SMALL, LARGE, PAIRWISE = "jpeg_compressibility", "jpeg_incompressibility", "jpeg_compressibility_pairwise"


def test_equal_specs_share_one_model_and_a_swap_closes_only_its_own(monkeypatch):
    built, closed = [], []

    def counting_build(spec: RewardSpec):
        model = build_reward(spec)
        close = model.close
        model.close = lambda: (closed.append(spec.name), close())  # type: ignore[method-assign]
        built.append(spec.name)
        return model

    monkeypatch.setattr(reward_worker, "build_reward", counting_build)
    worker = RewardWorker(
        [RewardSpec(name=SMALL, weight=2.0), RewardSpec(name=LARGE)],
        eval_specs=[RewardSpec(name=SMALL), RewardSpec(name=PAIRWISE)],
    )
    assert built == [SMALL, PAIRWISE, LARGE]  # the evaluation's two, then the one training reward not among them
    evaluation = worker._eval
    assert evaluation is not None and worker.models[0] is evaluation.models[0]
    group = MediaGroup("g0", "p", 0, torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8))
    assert worker.score(group).weights == {SMALL: 2.0, LARGE: 1.0}  # the weight stays the training spec's

    worker.swap([RewardSpec(name=PAIRWISE, weight=0.5)], 1)
    assert built == [SMALL, PAIRWISE, LARGE] and worker.models[0] is evaluation.models[1]
    assert closed == [LARGE]  # the retired spec closed its own model, not the scorer it borrowed
    results = worker.versus_start([group], [group])
    assert [r.reward for r in results] == [SMALL, PAIRWISE] and results[1].candidate[""].tolist() == [0.5, 0.5]

    plain = RewardWorker([RewardSpec(name=SMALL)], eval_specs=[RewardSpec(name=SMALL, pairs_per_sample=1)])
    assert plain.models[0] is not plain._eval.models[0]  # any other difference: a model of its own
