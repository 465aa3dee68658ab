"""Full fine-tuning under ZeRO-3 on 2 learner ranks (Ray actors) with the frozen reference's KL, activation
checkpointing and an EMA: after each publish (bucketed, gathered per bucket; from a whole snapshot or a ring
of two buckets) both rollout workers hold exactly the learner's weights, the exported transformer is the EMA
of the published versions, and the workers evaluate with that EMA when it is published for evaluation."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from actors.rollout_worker import RolloutWorker
from flexgrpo.records import PromptGroup, ScoredGroup
from learner.learner import GRPOLearner
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_threads(*calls) -> None:
    """Run the calls concurrently (the receivers of one broadcast); re-raise the first error."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def publish(ray, learners, workers, ema: bool = False):
    """As the driver publishes: the workers receive the announced header while every rank publishes.
    -> rank 0's header"""
    header = ray.get(learners[0].weight_header.remote(ema))
    publishing = [a.publish_weights.remote(header) for a in learners]
    in_threads(*[lambda w=w: w.receive_weights(header) for w in workers])  # receive verifies the checksum
    published, other = ray.get(publishing)
    assert published == header and other is None
    return header


@pytest.mark.parametrize("snapshot", ["device", "none"])  # a whole copy; a ring of two buckets
def test_zero3_full_finetune_workers_equal_learner_after_each_publish(ray_local, tmp_path, snapshot):
    from diffusers import SD3Transformer2DModel

    ray = ray_local
    cfg = tiny_config(
        f"learner.sync_snapshot={snapshot}",
        "policy.lora.enabled=false",
        "learner.zero_stage=3",
        "learner.lr=1e-3",
        "learner.activation_checkpointing=true",
        "learner.ema_decay=0.5",
        "learner.sync_bucket_mb=0.05",  # the tiny transformer (0.3 MB) goes in ~7 buckets
        "grpo.kl_beta=0.01",
        "grpo.group_size=2",
        "grpo.groups_per_step=2",
        "cluster.learner.num_workers=2",
        "cluster.num_gpus=4",
        "sampler.num_steps=4",
    )
    port = free_port()
    learners = [
        ray.remote(num_cpus=0)(GRPOLearner).remote(
            cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, rank=r, world_size=2, master_port=port
        )
        for r in range(2)
    ]
    workers = [RolloutWorker(cfg.policy, cfg.sampler, run_seed=0) for _ in range(2)]
    sync_port = free_port()
    joined = learners[0].join_weight_sync.remote("127.0.0.1", sync_port, 3)
    in_threads(*[lambda i=i: workers[i].join_weight_sync("127.0.0.1", sync_port, 1 + i, 3) for i in range(2)])
    ray.get(joined)

    states = [ray.get([a.trainable_state.remote() for a in learners])[0]]  # version 0 (gathered on both ranks)
    for step in range(2):
        prompts = [PromptGroup(f"s{step}-g{r}", "a photo of a red cat", 2, seed=10 * step + r) for r in range(2)]
        groups = [workers[r].sample(prompts[r], min_version=step)[0] for r in range(2)]
        for w in workers:  # the worker switched to the version it was sent
            assert w.version == step
            assert all(torch.equal(w.params[n], states[-1][n]) for n in states[-1])
        rewards = torch.tensor([1.0, -1.0])
        scores = [ScoredGroup(g.group_id, g.prompt, g.policy_version, 0, rewards, {"r": rewards}) for g in groups]
        trained = ray.get([a.train_step.remote(scores, groups[r]) for r, a in enumerate(learners)])
        if step == 1:
            assert trained[0].metrics["loss/kl"] > 0  # the frozen reference and the policy now differ
        header = publish(ray, learners, workers)
        assert header.version == step + 1 and len(header.bucket_ends) > 3
        states.append(ray.get([a.trainable_state.remote() for a in learners])[0])
        assert any(not torch.equal(states[-1][n], states[-2][n]) for n in states[-1])
    for w, r in zip(workers, range(2), strict=True):
        w.sample(PromptGroup(f"s2-g{r}", "a photo of a red cat", 2, seed=99), min_version=2)
        assert all(torch.equal(w.params[n], states[-1][n]) for n in states[-1])

    folders = ray.get([a.export.remote(str(tmp_path / "export")) for a in learners])
    assert folders[1] is None
    exported = dict(SD3Transformer2DModel.from_pretrained(folders[0]).named_parameters())
    for n, w0 in states[0].items():  # ema_2 = 0.25 w0 + 0.25 w1 + 0.5 w2
        ema = 0.25 * w0 + 0.25 * states[1][n] + 0.5 * states[2][n]
        torch.testing.assert_close(exported[n].detach(), ema, rtol=1e-5, atol=1e-6)

    # evaluation with the EMA: published apart, sampled with, and the sampling weights left alone
    header = publish(ray, learners, workers, ema=True)
    assert header.ema and header.version == 2
    held = PromptGroup("eval-0", "a photo of a red cat", 2, seed=0)
    reference = RolloutWorker(cfg.policy, cfg.sampler, run_seed=0)  # samples with the exported EMA, by hand
    with torch.no_grad():
        for n, p in reference.params.items():
            p.copy_(exported[n])
    expected = reference.evaluate(held).media
    for w in workers:
        assert torch.equal(w.evaluate(held, min_version=2, ema=True).media, expected)
        assert all(torch.equal(w.params[n], states[-1][n]) for n in states[-1])  # back to the sampling weights
        assert not torch.equal(w.evaluate(held, min_version=2).media, expected)
    for a in learners:
        ray.kill(a)
