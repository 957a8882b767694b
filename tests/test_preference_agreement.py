"""rspo.preference.agreement: a judge's agreement with AlpacaEval's annotator, by hand."""

from __future__ import annotations

import json

import pytest

from rspo.artifacts import ArtifactError
from rspo.preference.agreement import AnnotatedPair, agreement, load_annotated_pairs

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


def _pair(ref_len, out_len, output_won):
    return AnnotatedPair("q", "r" * ref_len, "o" * out_len, 1.9 if output_won else 1.1, "m", 0)


def test_agreement_by_hand():
    pairs = [
        _pair(100, 120, True),  # balanced; the longer output won
        _pair(100, 130, False),  # balanced; the shorter reference won
        _pair(100, 20, False),  # unbalanced; the longer reference won
        _pair(100, 300, True),  # unbalanced; the longer output won
    ]
    # judge verdicts: right, right (prefers the shorter), tie, wrong (prefers the shorter)
    r_ref = [0.2, 0.9, 0.5, 0.7]
    r_out = [0.8, 0.1, 0.5, 0.3]
    t = agreement(pairs, r_ref, r_out)
    assert t["all"]["n"] == 4
    assert t["all"]["judge"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)  # a tie counts 1/2
    assert t["all"]["longer_wins"] == pytest.approx(3 / 4)
    assert t["all"]["output_wins"] == pytest.approx(2 / 4)
    # q = the judge prefers the longer answer on pair 0 and half of the tie: (1 + 0.5) / 4
    q, a = 1.5 / 4, 3 / 4
    assert t["all"]["prefers_longer"] == pytest.approx(q)
    assert t["all"]["length_matched"] == pytest.approx(q * a + (1 - q) * (1 - a))
    assert t["balanced"]["n"] == 2 and t["balanced"]["judge"] == 1.0 and t["balanced"]["longer_wins"] == 0.5
    shorter = t["judge_prefers_shorter"]
    assert shorter["n"] == 2 and shorter["judge"] == 0.5 and shorter["longer_wins"] == 0.5


def test_load_skips_ties_and_keeps_positions(tmp_path):
    rows = [{"instruction": f"i{n}", "output_1": "ref", "output_2": "out", "generator_1": "gpt4_1106_preview",
             "generator_2": "m", "preference": p} for n, p in enumerate([1.0, 1.5, 2.0, None])]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows))
    pairs = load_annotated_pairs([path])
    assert [(p.index, p.preference) for p in pairs] == [(0, 1.0), (2, 2.0)]
    path.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(ArtifactError, match="lacks column"):
        load_annotated_pairs([path])
