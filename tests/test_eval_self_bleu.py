"""Self-BLEU on hand-computed cases (3-gram BLEU, weights 1/3, smoothing method1, mean per instruction)."""

from __future__ import annotations

import json
import math

import pytest

from rspo.artifacts import write_table
from rspo.cli import main
from rspo.evaluation.self_bleu import instruction_self_bleu, self_bleu, tokenize

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


def test_tokenizer_splits_sentences_and_punctuation_offline():
    assert tokenize("Hello world. It's fine!") == ["Hello", "world", ".", "It", "'s", "fine", "!"]
    assert tokenize("Don't stop") == ["Do", "n't", "stop"]


def test_partial_overlap_by_hand():
    # "a b c d" vs refs {"a b c e", "x y z w"}: p1 = 3/4, p2 = 2/3, p3 = 1/2, equal length -> BP = 1
    # "x y z w" matches no unigram -> BLEU 0 (smoothing does not apply then)
    s = (3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3)
    assert instruction_self_bleu(["a b c d", "a b c e", "x y z w"]) == pytest.approx((s + s + 0) / 3)


def test_brevity_penalty_by_hand():
    # "a b c" vs "a b c d e": all n-grams match, BP = exp(1 - 5/3)
    # "a b c d e" vs "a b c": p1 = 3/5, p2 = 2/4, p3 = 1/3, longer than the reference -> BP = 1
    s1 = math.exp(1 - 5 / 3)
    s2 = (3 / 5 * 2 / 4 * 1 / 3) ** (1 / 3)
    assert instruction_self_bleu(["a b c", "a b c d e"]) == pytest.approx((s1 + s2) / 2)


def test_identical_samples_score_one_and_average_is_per_instruction():
    same = ["the cat sat on the mat"] * 3
    disjoint = ["a b c", "x y z"]
    value, per = self_bleu([same, disjoint], progress=False)
    assert per == pytest.approx([1.0, 0.0])
    assert value == pytest.approx(0.5)  # mean of instructions, not of the 5 samples (3/5)


def test_needs_two_samples():
    with pytest.raises(ValueError):
        instruction_self_bleu(["only one"])


def _table(path, samples):
    rows = [
        {
            "prompt_id": f"p{k}",
            "prompt": f"q{k}",
            "responses": s,
            "num_tokens": [1] * len(s),
            "finish_reasons": ["stop"] * len(s),
            "generator": "m",
            "sampling": {"n": len(s)},
        }
        for k, s in enumerate(samples)
    ]
    write_table(path, rows, "responses")


def test_cli(tmp_path, capsys):
    f, out = tmp_path / "r.jsonl", tmp_path / "selfbleu.json"
    _table(f, [["the cat sat on the mat"] * 2, ["a b c", "x y z"]])
    assert main(["self-bleu", "--responses", str(f), "--out", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    assert got["self_bleu"] == pytest.approx(0.5) and got["n"] == 2 and got["num_instructions"] == 2
    assert "NLTKWordTokenizer" in got["tokenizer"] and got["per_instruction"] == pytest.approx({"p0": 1.0, "p1": 0.0})
    _table(f, [["one sample"]])
    assert main(["self-bleu", "--responses", str(f), "--out", str(out)]) == 1
    assert "n >= 2" in capsys.readouterr().err
