"""A learner re-scores the prompt embeddings its rollout workers recorded and never encodes a prompt, so it loads
no text encoder or tokenizer: at real shapes T5-XXL alone is 8.9 GiB on every learner GPU (UMT5-XXL 10.6 GiB for
Wan). Every other part it loads is the rollout worker's; asked to encode a prompt, its policy says why it cannot.
That the learner's log-probs still equal the rollout's is test_policy_families_onpolicy_ratio.py."""

import pytest

from actors.policies import build_policy
from actors.policies.base import TEXT_PARTS
from flexgrpo.net import free_port
from learner.learner import GRPOLearner
from tests.conftest import FAMILIES, tiny_config


def _loaded(policy) -> set[str]:
    return {name for name, part in policy.pipeline.components.items() if part is not None}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_policy_without_text_encoders_has_every_other_part(family):
    cfg = tiny_config(*FAMILIES[family])
    full, without = build_policy(cfg.policy), build_policy(cfg.policy, text_encoders=False)
    text_parts = {name for name in _loaded(full) if name.startswith(TEXT_PARTS)}
    assert "text_encoder" in text_parts and "tokenizer" in text_parts
    assert _loaded(without) == _loaded(full) - text_parts
    assert without.latent_shape() == full.latent_shape()
    with pytest.raises(RuntimeError, match="built without its text encoders"):
        without.encode_prompts(["a red cat"])


def test_the_learner_builds_its_policy_without_text_encoders():
    cfg = tiny_config()
    learner = GRPOLearner(cfg.policy, cfg.sampler, cfg.grpo, cfg.learner, master_port=free_port())
    assert not {name for name in _loaded(learner.policy) if name.startswith(TEXT_PARTS)}
