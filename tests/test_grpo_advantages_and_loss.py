"""The GRPO math on hand-made tensors: advantages, the clipped loss and the KL, line by line."""

import torch

from learner.grpo import STD_EPS, decoupled_policy_loss, group_advantages, kl_to_reference, weighted_advantages


def test_advantages_are_per_group_zscores():
    r1, r2 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 10.0, 30.0, 30.0])
    a1, a2 = group_advantages([r1, r2], [0, 0], global_std=False, clip=5.0)
    torch.testing.assert_close(a1, (r1 - 2.5) / (r1.std(unbiased=False) + STD_EPS))
    torch.testing.assert_close(a2, torch.tensor([-1.0, -1.0, 1.0, 1.0]) * 10 / (10 + STD_EPS))


def test_equal_rewards_carry_no_signal_and_clamp_applies():
    flat, spike = torch.full((4,), 0.5), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0])
    a_flat, a_spike = group_advantages([flat, spike], [0, 0], global_std=False, clip=2.0)
    assert torch.equal(a_flat, torch.zeros(4))
    assert a_spike.max().item() == 2.0


def test_global_std_never_mixes_reward_versions():
    r_old, r_new1, r_new2 = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 100.0]), torch.tensor([0.0, 300.0])
    a_old, a_new1, _ = group_advantages([r_old, r_new1, r_new2], [0, 1, 1], global_std=True, clip=1e9)
    # the old group is normalised by its own std (0.5), not by the new version's large one
    torch.testing.assert_close(a_old, torch.tensor([-0.5, 0.5]) / (0.5 + STD_EPS))
    pooled_std = torch.tensor([0.0, 100.0, 0.0, 300.0]).std(unbiased=False)
    torch.testing.assert_close(a_new1, torch.tensor([-50.0, 50.0]) / (pooled_std + STD_EPS))


def test_weighted_advantages_normalise_each_reward_first():
    comps = [{"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 1000.0])}]
    (adv,) = weighted_advantages(comps, [{"a": 1.0, "b": 0.5}], [0], global_std=False, clip=5.0)
    unit = 0.5 / (0.5 + STD_EPS)
    torch.testing.assert_close(adv, torch.tensor([-1.5 * unit, 1.5 * unit]), rtol=1e-4, atol=1e-4)


def test_decoupled_loss_at_staleness_zero_is_the_ppo_surrogate():
    logp, old = torch.tensor([0.0, 0.5, -0.5]), torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, stats = decoupled_policy_loss(
        log_prob=logp, prox_log_prob=old, behaviour_log_prob=old, advantages=adv, clip_range=0.2, is_cap=2.0
    )
    ratio = torch.exp(logp)
    expected = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2)).mean()
    torch.testing.assert_close(loss, expected)
    assert abs(stats["clip_frac"].item() - 2 / 3) < 1e-6
    assert stats["is_weight_mean"].item() == 1.0 and stats["kl_behaviour_prox"].item() == 0.0


def test_on_policy_gradient_pushes_up_the_better_sample():
    logp = torch.zeros(2, requires_grad=True)
    loss, _ = decoupled_policy_loss(
        log_prob=logp,
        prox_log_prob=logp.detach(),
        behaviour_log_prob=torch.zeros(2),
        advantages=torch.tensor([1.0, -1.0]),
        clip_range=1e-4,
        is_cap=2.0,
    )
    loss.backward()
    assert logp.grad[0] < 0 < logp.grad[1]  # descent raises the log-prob of the advantaged sample


def test_stale_samples_are_weighted_not_clipped_and_the_weight_is_truncated():
    """Behaviour policy far from the proximal one: plain PPO against the behaviour would clip every term (no
    gradient); decoupled PPO keeps the gradient, scaled by pi_prox / pi_behav truncated at the cap."""
    prox = torch.tensor([0.3, -0.2, 2.0])  # log pi_prox of each transition
    behaviour = torch.zeros(3)  # log pi_behav: the stale sampler's
    logp = prox.clone().requires_grad_(True)  # the forward at the proximal weights
    adv = torch.tensor([1.0, 1.0, 1.0])
    loss, stats = decoupled_policy_loss(
        log_prob=logp, prox_log_prob=prox, behaviour_log_prob=behaviour, advantages=adv, clip_range=1e-4, is_cap=2.0
    )
    loss.backward()
    weights = torch.exp(prox - behaviour).clamp(max=2.0)  # [1.35, 0.82, 2.0 (truncated from 7.39)]
    torch.testing.assert_close(logp.grad, -adv * weights / 3)
    assert stats["clip_frac"].item() == 0.0  # nothing moved since the proximal weights
    assert stats["behaviour_clip_frac"].item() == 1.0  # what clipping against the behaviour policy would do
    assert abs(stats["is_truncated_frac"].item() - 1 / 3) < 1e-6
    torch.testing.assert_close(stats["is_weight_max"], torch.tensor(2.0))
    torch.testing.assert_close(stats["kl_behaviour_prox"], (behaviour - prox).mean())


def test_kl_to_reference_formula():
    mean, ref = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    std = torch.tensor([0.5, 1.0]).view(2, 1, 1)
    torch.testing.assert_close(kl_to_reference(mean=mean, ref_mean=ref, std=std), torch.tensor([2.0, 0.5]))


def test_weighted_advantages_use_each_groups_own_spec():
    before = {"a": torch.tensor([0.0, 1.0])}
    after = {"b": torch.tensor([5.0, 0.0])}
    adv_before, adv_after = weighted_advantages(
        [before, after], [{"a": 1.0}, {"b": 3.0}], [0, 1], global_std=True, clip=5.0
    )
    unit = 0.5 / (0.5 + STD_EPS)
    torch.testing.assert_close(adv_before, torch.tensor([-unit, unit]))
    unit_b = 2.5 / (2.5 + STD_EPS)
    torch.testing.assert_close(adv_after, torch.tensor([3 * unit_b, -3 * unit_b]))


def test_groups_of_the_same_prompt_are_normalised_together():
    a, b, other = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]), torch.tensor([5.0, 5.0])
    adv_a, adv_b, adv_other = group_advantages(
        [a, b, other], [0, 0, 0], global_std=False, clip=10.0, prompts=["cat", "cat", "dog"]
    )
    pooled = torch.tensor([0.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(adv_a, (a - 1.5) / (pooled.std(unbiased=False) + STD_EPS))
    torch.testing.assert_close(adv_b, (b - 1.5) / (pooled.std(unbiased=False) + STD_EPS))
    assert torch.equal(adv_other, torch.zeros(2))  # a prompt whose samples all score the same
    # the same prompt under another reward version is its own pool
    adv_a2, adv_b2 = group_advantages([a, b], [0, 1], global_std=False, clip=10.0, prompts=["cat", "cat"])
    torch.testing.assert_close(adv_a2, torch.tensor([-1.0, 1.0]) * 0.5 / (0.5 + STD_EPS))
