"""Pairwise annotation against a reference, in alpaca_eval's format.

For every instruction the judge sees the reference output and the model output in an order drawn
per instruction from ``seed`` (a hash of seed and instruction, so it does not depend on row order),
and returns P(the output shown second wins). The draw is undone afterwards:

    not switched (reference first):  preference = 1 + P(second wins)
    switched     (model first):      preference = 2 - P(second wins)      (alpaca_eval's x -> 3 - x)

so ``preference`` is in [1, 2] with 2 = the evaluated model (``output_2``) wins. Identical outputs
get 1.5 without asking the judge (as alpaca_eval's ``PairwiseAnnotator``); a judge that gives no
verdict (NaN, e.g. an unparsable LLM answer) leaves ``preference`` null, which alpaca_eval's metrics
drop. Verdicts are cached (``rspo.preference.cache.JudgeCache``) under
``judgement_key("annotate:" + judge_key, instruction, first_shown, second_shown)``: a rerun asks the
judge nothing, and NaN verdicts are not cached so that they are retried.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: (instruction, first shown, second shown) triples -> P(second shown wins) each; NaN = no verdict
PSecond = Callable[[list[tuple[str, str, str]]], Sequence[float]]


def is_switched(instruction: str, seed: int) -> bool:
    """Whether the model output is shown FIRST for this instruction (a fair coin per seed and instruction)."""
    digest = hashlib.sha256(f"rspo-annotate\0{seed}\0{instruction}".encode()).digest()
    return bool(digest[0] & 1)


def judge_p_second(judge) -> PSecond:
    """Adapter for an ``rspo.preference`` judge: ``compare(prompt, [a, b])`` -> P(b beats a)
    = sigmoid((M[1, 0] - M[0, 1]) / 2), the order-debiased logit (equal to M[1, 0] for every judge
    whose matrix is antisymmetric; for PairRM it removes the position bias)."""
    from rspo.preference import debiased_logit

    def p_second(triples: list[tuple[str, str, str]]) -> list[float]:
        mats = judge.compare_many([t[0] for t in triples], [[t[1], t[2]] for t in triples])
        return [float(1.0 / (1.0 + np.exp(-float(debiased_logit(np.asarray(m), 1, 0))))) for m in mats]

    return p_second


def annotate_pairs(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    p_second: PSecond,
    annotator: str,
    judge_key: str | None = None,
    seed: int = 0,
    cache=None,
    batch_size: int = 64,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """alpaca_eval annotation rows for ``(reference_row, model_row)`` pairs, in the given order.

    ``p_second`` is called on batches of at most ``batch_size`` uncached, non-identical pairs;
    ``cache`` is any object with ``get_many(keys) -> {key: float}`` and ``put_many({key: float})``
    (``JudgeCache``), written after every batch so that an interrupted run resumes.
    """
    from tqdm import tqdm

    from rspo.preference.cache import judgement_key

    judge_key = f"annotate:{judge_key or annotator}"
    plan = []  # (ref, model, switched, key | None)
    todo: dict[str, tuple[str, str, str]] = {}
    for ref, model in pairs:
        instruction, out_ref, out_model = ref["instruction"], ref["output"], model["output"]
        switched = is_switched(instruction, seed)
        key = None
        if out_ref != out_model:
            first, second = (out_model, out_ref) if switched else (out_ref, out_model)
            key = judgement_key(judge_key, instruction, first, second)
            todo[key] = (instruction, first, second)
        plan.append((ref, model, switched, key))

    verdicts: dict[str, float] = dict(cache.get_many(list(todo))) if cache is not None and todo else {}
    missing = [k for k in todo if k not in verdicts]
    with tqdm(total=len(missing), desc=f"annotate ({annotator})", unit="pair", disable=not progress) as bar:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            values = [float(v) for v in p_second([todo[k] for k in chunk])]
            if len(values) != len(chunk):
                raise RuntimeError(f"judge returned {len(values)} verdicts for {len(chunk)} pairs")
            new = {k: v for k, v in zip(chunk, values) if math.isfinite(v)}
            if cache is not None and new:
                cache.put_many(new)
            verdicts.update(dict(zip(chunk, values)))
            bar.update(len(chunk))

    rows = []
    for ref, model, switched, key in plan:
        if key is None:
            preference: float | None = 1.5
        else:
            p = verdicts[key]
            if not math.isfinite(p):
                preference = None
            else:
                p = min(max(p, 0.0), 1.0)
                preference = 2.0 - p if switched else 1.0 + p
        rows.append(
            {
                "instruction": ref["instruction"],
                "output_1": ref["output"],
                "output_2": model["output"],
                "generator_1": ref.get("generator") or "reference",
                "generator_2": model.get("generator") or "model",
                "dataset": ref.get("dataset") or model.get("dataset"),
                "annotator": annotator,
                "preference": preference,
                "is_switched_outputs": switched,
            }
        )
    return rows
