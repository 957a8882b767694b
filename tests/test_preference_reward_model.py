"""Reward-model judge on the tiny random LlamaForSequenceClassification fixture."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import reward_tol

from rspo.config import JudgeConfig
from rspo.errors import RSPOError
from rspo.preference import get_judge

PROMPT = "Give me three tips for staying healthy."
CANDS = ["Eat well, sleep enough and move every day.", "Sleep.", "The capital of France is Paris, and the sky is blue."]


def _rewards_by_hand(model_dir):
    """r of each candidate from one unpadded forward pass per chat-templated conversation."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    out = []
    for c in CANDS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": c}], tokenize=False
        )
        assert text.endswith(c + "<|im_end|>\n")
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out.append(float(model(**ids).logits[0, 0]))
    return np.array(out)


def test_matrix_is_the_bradley_terry_reward_difference(tiny_reward_model_dir):
    r = _rewards_by_hand(tiny_reward_model_dir)
    assert np.ptp(r) > 1e-4  # the random model does tell the candidates apart
    # batch_size 2 pads the shorter conversation: padding must not change any reward
    judge = get_judge(JudgeConfig(name="reward_model", model=str(tiny_reward_model_dir), batch_size=2, beta=5.0))
    assert judge.name == f"reward_model:{tiny_reward_model_dir}"
    m = judge.compare(PROMPT, CANDS)
    # padded batches vs one sequence each: float32 rewards within reward_tol (1.7e-5 here, 0.02% of their
    # spread), a difference of two within twice that
    tol = reward_tol(tiny_reward_model_dir)
    assert tol < 1e-3 * np.ptp(r)
    np.testing.assert_allclose(m, r[:, None] - r[None, :], rtol=0, atol=2 * tol)  # beta is not applied
    np.testing.assert_allclose(judge.score([PROMPT] * 3, CANDS), r, rtol=0, atol=tol)

    scaled = get_judge(JudgeConfig(name="reward_model", model=str(tiny_reward_model_dir), options={"scale": 2.0}))
    np.testing.assert_allclose(scaled.compare(PROMPT, CANDS), 2.0 * (r[:, None] - r[None, :]), rtol=0, atol=4 * tol)


def test_batches_across_prompts_and_caches(tiny_reward_model_dir, tmp_path):
    cfg = JudgeConfig(name="reward_model", model=str(tiny_reward_model_dir), batch_size=3, cache_dir=str(tmp_path))
    judge = get_judge(cfg)
    mats = judge.compare_many([PROMPT, "What is 2 + 2?"], [CANDS, ["4", "Four.", "5"]])
    assert [m.shape for m in mats] == [(3, 3), (3, 3)]
    # batched with another prompt's candidates: rewards within reward_tol, their differences twice that
    np.testing.assert_allclose(mats[0], judge.compare(PROMPT, CANDS), rtol=0, atol=2 * reward_tol(tiny_reward_model_dir))
    again = get_judge(cfg)
    np.testing.assert_array_equal(again.compare(PROMPT, CANDS), mats[0])
    assert again._model is None  # read from the cache


def test_errors(tiny_reward_model_dir):
    with pytest.raises(RSPOError, match="judge.model"):
        get_judge(JudgeConfig(name="reward_model"))
    with pytest.raises(RSPOError, match="unknown option"):
        get_judge(JudgeConfig(name="reward_model", model=str(tiny_reward_model_dir), options={"beta": 1}))
    with pytest.raises(RSPOError, match="no such local folder"):
        get_judge(JudgeConfig(name="reward_model", model="/nonexistent/rm")).compare(PROMPT, CANDS)
