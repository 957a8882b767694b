"""Agreement of a judge with AlpacaEval 2.0's own pairwise preferences (GPT-4-turbo as the annotator).

An AlpacaEval annotations file holds, per instruction, the reference output (``output_1``, GPT-4-turbo's)
and a model's output (``output_2``) with ``preference`` in [1, 2] (above 1.5: the model's output won).
For a scalar judge with scores ``r_1`` (reference) and ``r_2`` (model):

* the annotator's verdict is ``sign(preference - 1.5)``; exact ties (1.5) are left out;
* the judge agrees when ``sign(r_2 - r_1)`` is that verdict; a judge tie (``r_1 == r_2``) counts 1/2;
* "the longer answer wins" is the same with ``r = len(text)`` (characters, AlpacaEval's length unit);
* a pair is **length-balanced** when ``max(len) / min(len) <= 1.5`` (characters; an empty text is
  never balanced);
* the pairs where the judge prefers the **shorter** answer show what the judge knows besides length:
  "the longer answer wins" is wrong on every such pair it does not tie;
* **length-matched**: the agreement expected of a judge that knows nothing but length and prefers the
  longer answer on the same share q of the pairs as the judge, picking those pairs at random:
  ``q * a + (1 - q) * (1 - a)``, with a the agreement of "the longer answer wins". The judge's
  agreement minus this is what it knows besides length (negative: less than nothing).

Used by ``benchmarks/judge_agreement.py`` (the measurement in docs/judges.md) and by the CI test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rspo.evaluation.metrics import load_annotations

MAX_LENGTH_RATIO = 1.5


@dataclass(frozen=True)
class AnnotatedPair:
    instruction: str
    reference: str  # output_1
    output: str  # output_2
    preference: float  # in [1, 2]; > 1.5: ``output`` won
    model: str  # generator_2
    index: int  # row in the file (the instruction's position in AlpacaEval's canonical order)


def load_annotated_pairs(paths: Sequence[str | Path]) -> list[AnnotatedPair]:
    """Every non-tied pair of the given alpaca_eval annotations files (validated by ``load_annotations``)."""
    out = []
    for path in paths:
        for n, row in enumerate(load_annotations(path)):
            p = row["preference"]
            if p is None or float(p) == 1.5:
                continue
            out.append(AnnotatedPair(row["instruction"], row["output_1"], row["output_2"], float(p),
                                     row["generator_2"], n))
    return out


def _verdict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """+1 when b > a (the model's output preferred), -1 when a > b, 0 on a tie."""
    return np.sign(np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64))


def _agree(judge: np.ndarray, truth: np.ndarray) -> float:
    """Share of pairs where the judge's verdict is the truth (a judge tie counts 1/2); nan if none."""
    if len(truth) == 0:
        return float("nan")
    return float(np.mean(np.where(judge == 0, 0.5, judge == truth)))


def agreement(pairs: Sequence[AnnotatedPair], r_ref: Sequence[float], r_out: Sequence[float],
              max_ratio: float = MAX_LENGTH_RATIO) -> dict[str, dict[str, float]]:
    """Agreement of the judge (scores ``r_ref`` of the references, ``r_out`` of the outputs) with the
    annotator, and of "the longer answer wins", on three subsets of ``pairs``:

    ``all``; ``balanced`` (length ratio <= ``max_ratio``); ``judge_prefers_shorter`` (the judge's verdict
    is the opposite of the longer-wins verdict). Each subset: ``n``, ``judge``, ``longer_wins``,
    ``length_matched`` (see the module docstring), ``prefers_longer`` (q) and ``output_wins`` (share of
    pairs the model's output won; ``1 - output_wins`` is the agreement of always picking the reference).
    """
    truth = np.array([1.0 if p.preference > 1.5 else -1.0 for p in pairs])
    l_ref = np.array([len(p.reference) for p in pairs], dtype=np.float64)
    l_out = np.array([len(p.output) for p in pairs], dtype=np.float64)
    judge = _verdict(r_ref, r_out)
    longer = _verdict(l_ref, l_out)
    ratio = np.maximum(l_ref, l_out) / np.maximum(np.minimum(l_ref, l_out), 1e-9)
    subsets = {
        "all": np.ones(len(pairs), dtype=bool),
        "balanced": (np.minimum(l_ref, l_out) > 0) & (ratio <= max_ratio),
        "judge_prefers_shorter": (judge != 0) & (judge == -longer),
    }
    out = {}
    for name, mask in subsets.items():
        q = _agree(judge[mask], longer[mask])  # share of pairs where the judge prefers the longer answer
        a = _agree(longer[mask], truth[mask])
        out[name] = {
            "n": int(mask.sum()),
            "judge": _agree(judge[mask], truth[mask]),
            "longer_wins": a,
            "length_matched": q * a + (1 - q) * (1 - a),
            "prefers_longer": q,
            "output_wins": float(np.mean(truth[mask] > 0)) if mask.any() else float("nan"),
        }
    return out
