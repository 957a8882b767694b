"""Win-rate estimation and chosen/rejected selection from a K x K preference matrix.

This is ``scripts/compute_prob.py`` of the SPPO code (uclaml/SPPO), fed with LLM-Blender's
``get_scores_from_cmps(policy="max_logits")`` scores:

    s_i    = (1/K) sum_{j=1..K} (M[i, j] - M[j, i])        (j = i included: its term is 0)
    P[i, j] = sigmoid(s_i - s_j)                            (P[i, i] = 0.5)
    chosen = argmax_i s_i,   rejected = argmin_i s_i
    p_chosen = (1/K) sum_j P[chosen, j],  p_rejected = (1/K) sum_j P[rejected, j]   (diagonal 0.5 included)

``M[i, j]`` is the logit that response i beats response j (what PairRM emits); the diagonal is
ignored. Oracles that emit probabilities convert them with :func:`prob_to_logit` first, so every
judge goes through the same :func:`select_pair`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Scores whose spread ``max(s) - min(s)`` is at most this are "no signal": the prompt is dropped.
NO_SIGNAL_TOL = 1e-9


@dataclass(frozen=True)
class PairSelection:
    """The chosen/rejected pair of one prompt and the estimated win rates against pi_t."""

    chosen: int  # index of y_w = argmax s (first index on ties, as numpy.argmax)
    rejected: int  # index of y_l = argmin s (first index on ties, as numpy.argmin)
    p_chosen: float  # P_hat(y_w > pi_t) = mean_j P[chosen, j]
    p_rejected: float  # P_hat(y_l > pi_t) = mean_j P[rejected, j]
    scores: np.ndarray  # (K,) s_i
    probs: np.ndarray  # (K, K) P[i, j] = sigmoid(s_i - s_j)


def _as_square(matrix, what: str) -> np.ndarray:
    m = np.array(matrix, dtype=np.float64)  # a copy: the caller's array is never modified
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{what} must be a square K x K matrix, got shape {m.shape}")
    if m.shape[0] < 2:
        raise ValueError(f"{what} must compare at least K = 2 responses, got K = {m.shape[0]}")
    return m


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic function


def select_pair(logits, *, tol: float = NO_SIGNAL_TOL) -> PairSelection | None:
    """Pick chosen/rejected from K x K preference logits and estimate their win rates.

    Returns ``None`` when all scores are equal (``max(s) - min(s) <= tol``): such a prompt carries
    no preference signal and must be dropped (and counted), never trained with chosen == rejected.
    Raises ``ValueError`` for a non-square matrix, K < 2, or a non-finite off-diagonal entry.
    """
    m = _as_square(logits, "preference logits")
    np.fill_diagonal(m, 0.0)  # the diagonal is ignored (M[i, i] - M[i, i] would be 0 anyway)
    if not np.all(np.isfinite(m)):
        i, j = np.argwhere(~np.isfinite(m))[0]
        raise ValueError(f"preference logits must be finite, got M[{i}, {j}] = {m[i, j]}")
    k = m.shape[0]
    scores = (m - m.T).sum(axis=1) / k  # s_i = mean_j (M[i, j] - M[j, i]), j = i included
    if scores.max() - scores.min() <= tol:
        return None
    probs = _sigmoid(scores[:, None] - scores[None, :])  # P[i, j] = sigmoid(s_i - s_j)
    win_rates = probs.mean(axis=1)  # P_hat(y_i > pi_t), diagonal 0.5 included
    chosen, rejected = int(np.argmax(scores)), int(np.argmin(scores))
    return PairSelection(
        chosen=chosen,
        rejected=rejected,
        p_chosen=float(win_rates[chosen]),
        p_rejected=float(win_rates[rejected]),
        scores=scores,
        probs=probs,
    )


def prob_to_logit(probs, eps: float = 1e-6) -> np.ndarray:
    """THE conversion of an oracle's probabilities ``P[i, j] = P(i beats j)`` into logits.

    Returns ``log(p / (1 - p))`` of ``p = clip(P, eps, 1 - eps)`` (so 0 and 1 stay finite), to be
    passed to :func:`select_pair`. The diagonal is ignored (set to 0). Raises ``ValueError`` for a
    non-square matrix, K < 2, or an off-diagonal entry that is not a finite number in [0, 1].
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    p = _as_square(probs, "preference probabilities")
    np.fill_diagonal(p, 0.5)
    bad = ~np.isfinite(p) | (p < 0.0) | (p > 1.0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"preference probabilities must lie in [0, 1], got P[{i}, {j}] = {p[i, j]}")
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)
