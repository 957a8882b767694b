"""select_pair / prob_to_logit against numbers worked out by hand (math.exp), never by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rspo.winrate import NO_SIGNAL_TOL, PairSelection, prob_to_logit, select_pair

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# M[i][j] = logit that i beats j; the diagonal is ignored
M3 = [
    [0.0, 1.0, 2.0],
    [0.5, 0.0, -1.0],
    [0.0, 3.0, 0.0],
]


def test_select_pair_3x3_by_hand():
    # s_i = (1/3) * sum_j (M[i][j] - M[j][i]), j = i included (its term is 0)
    s0 = ((1.0 - 0.5) + (2.0 - 0.0)) / 3  # 2.5/3
    s1 = ((0.5 - 1.0) + (-1.0 - 3.0)) / 3  # -1.5
    s2 = ((0.0 - 2.0) + (3.0 - (-1.0))) / 3  # 2/3
    # chosen = argmax = 0 (0.833 > 0.667), rejected = argmin = 1
    p_chosen = (0.5 + sig(s0 - s1) + sig(s0 - s2)) / 3  # row mean, diagonal 0.5 included
    p_rejected = (sig(s1 - s0) + 0.5 + sig(s1 - s2)) / 3

    sel = select_pair(M3)
    assert isinstance(sel, PairSelection)
    assert (sel.chosen, sel.rejected) == (0, 1)
    assert sel.scores == pytest.approx([s0, s1, s2], abs=1e-12)
    assert sel.p_chosen == pytest.approx(p_chosen, abs=1e-12)
    assert sel.p_rejected == pytest.approx(p_rejected, abs=1e-12)
    # literal values: sig(7/3) = 1/(1+e^(-7/3)) = 0.9116003, sig(1/6) = 0.5415705 (7 decimals: each <= 5e-8 off)
    assert sel.p_chosen == pytest.approx((0.5 + 0.9116003 + 0.5415705) / 3, abs=1e-6)
    assert sel.probs.shape == (3, 3)
    assert np.diag(sel.probs) == pytest.approx([0.5, 0.5, 0.5])
    assert sel.probs[0, 1] == pytest.approx(sig(s0 - s1), abs=1e-12)
    assert sel.probs[2, 1] == pytest.approx(sig(s2 - s1), abs=1e-12)
    assert sel.probs + sel.probs.T == pytest.approx(np.ones((3, 3)))


def test_select_pair_4x4_bradley_terry_and_first_index_tie_break():
    # M[i][j] = r_i - r_j gives M[i][j] - M[j][i] = 2 (r_i - r_j), so s_i = 2 (r_i - mean(r))
    r = [1.0, 3.0, 3.0, 0.0]  # mean 7/4; indices 1 and 2 tie for the best score
    m = [[ri - rj for rj in r] for ri in r]
    s = [2 * (ri - 7 / 4) for ri in r]  # [-1.5, 2.5, 2.5, -3.5]
    sel = select_pair(m)
    assert sel.scores == pytest.approx(s, abs=1e-12)
    assert sel.chosen == 1  # first index among the tied maxima, as numpy.argmax
    assert sel.rejected == 3
    p1 = (sig(2.5 + 1.5) + 0.5 + sig(0.0) + sig(2.5 + 3.5)) / 4
    p3 = (sig(-3.5 + 1.5) + sig(-3.5 - 2.5) + sig(-3.5 - 2.5) + 0.5) / 4
    assert sel.p_chosen == pytest.approx(p1, abs=1e-12)
    assert sel.p_rejected == pytest.approx(p3, abs=1e-12)


def test_rejected_tie_break_is_first_index():
    r = [0.0, 2.0, 0.0]
    sel = select_pair([[ri - rj for rj in r] for ri in r])
    assert (sel.chosen, sel.rejected) == (1, 0)


def test_diagonal_is_ignored():
    noisy = [row[:] for row in M3]
    for i, v in enumerate([100.0, float("nan"), -float("inf")]):
        noisy[i][i] = v
    a, b = select_pair(M3), select_pair(noisy)
    assert (a.chosen, a.rejected) == (b.chosen, b.rejected)
    assert a.scores == pytest.approx(b.scores)
    assert (a.p_chosen, a.p_rejected) == pytest.approx((b.p_chosen, b.p_rejected))


def test_input_is_not_modified():
    m = np.array(M3) + np.eye(3) * 7.0
    before = m.copy()
    select_pair(m)
    np.testing.assert_array_equal(m, before)


@pytest.mark.parametrize(
    "m",
    [
        np.zeros((4, 4)),
        np.full((3, 3), 2.5),  # constant: every M[i][j] - M[j][i] = 0
        [[0.0, 1.0, -2.0], [1.0, 0.0, 0.3], [-2.0, 0.3, 0.0]],  # symmetric: no preference either way
        np.full((3, 3), 0.0) + np.eye(3) * 9.0,  # only the (ignored) diagonal differs
    ],
)
def test_no_signal_returns_none(m):
    assert select_pair(m) is None


def test_no_signal_tolerance():
    tiny = [[0.0, 1e-11], [0.0, 0.0]]  # s = (+-1e-11)/2: spread 1e-11 <= 1e-9
    assert NO_SIGNAL_TOL == 1e-9
    assert select_pair(tiny) is None
    small = [[0.0, 1e-6], [0.0, 0.0]]  # spread 1e-6: a (weak) signal
    sel = select_pair(small)
    assert (sel.chosen, sel.rejected) == (0, 1)
    assert sel.p_chosen > sel.p_rejected


@pytest.mark.parametrize(
    ("m", "msg"),
    [
        ([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], "square"),
        ([[[0.0]]], "square"),
        ([[0.0]], "K = 2"),
        ([[0.0, float("nan")], [0.0, 0.0]], "finite"),
        ([[0.0, 1.0], [float("inf"), 0.0]], "finite"),
    ],
)
def test_select_pair_rejects_bad_input(m, msg):
    with pytest.raises(ValueError, match=msg):
        select_pair(m)


def test_prob_to_logit_by_hand_and_round_trip():
    p = [[0.5, 0.7, 0.2], [0.3, 0.5, 0.9], [0.8, 0.1, 0.5]]
    logits = prob_to_logit(p)
    assert logits[0, 1] == pytest.approx(math.log(0.7 / 0.3), abs=1e-12)
    assert logits[1, 2] == pytest.approx(math.log(0.9 / 0.1), abs=1e-12)
    assert logits[2, 0] == pytest.approx(math.log(0.8 / 0.2), abs=1e-12)
    assert np.diag(logits) == pytest.approx([0.0, 0.0, 0.0])
    back = [[sig(logits[i, j]) for j in range(3)] for i in range(3)]
    assert np.array(back) == pytest.approx(np.array(p), abs=1e-12)


def test_prob_to_logit_clips_certain_preferences():
    eps = 1e-6
    logits = prob_to_logit([[0.5, 1.0], [0.0, 0.5]], eps=eps)
    # clipping p to 1 - eps and taking 1 - p again loses ~10 digits (2.2e-16 / 1e-6): rel 1e-9 of the log
    assert logits[0, 1] == pytest.approx(math.log((1 - eps) / eps), rel=1e-9)  # 13.8155...
    assert logits[1, 0] == pytest.approx(-math.log((1 - eps) / eps), rel=1e-9)
    assert np.all(np.isfinite(logits))


def test_probabilities_go_through_select_pair():
    # a probability oracle with P[i][j] = sig(r_i - r_j) is the logit oracle M[i][j] = r_i - r_j
    r = [0.2, -1.0, 1.5]
    p = [[sig(ri - rj) for rj in r] for ri in r]
    sel = select_pair(prob_to_logit(p))
    s = [2 * (ri - sum(r) / 3) for ri in r]
    assert sel.scores == pytest.approx(s, abs=1e-9)
    assert (sel.chosen, sel.rejected) == (2, 1)
    assert sel.p_chosen == pytest.approx((sig(s[2] - s[0]) + sig(s[2] - s[1]) + 0.5) / 3, abs=1e-9)


@pytest.mark.parametrize(
    ("p", "kw", "msg"),
    [
        ([[0.5, 1.2], [0.0, 0.5]], {}, r"\[0, 1\]"),
        ([[0.5, -0.1], [0.0, 0.5]], {}, r"\[0, 1\]"),
        ([[0.5, float("nan")], [0.0, 0.5]], {}, r"\[0, 1\]"),
        ([[0.5, 0.4, 0.1]], {}, "square"),
        ([[0.5, 0.5], [0.5, 0.5]], {"eps": 0.0}, "eps"),
    ],
)
def test_prob_to_logit_rejects_bad_input(p, kw, msg):
    with pytest.raises(ValueError, match=msg):
        prob_to_logit(p, **kw)
