"""The judge interface: K candidates of one prompt -> a K x K matrix of preference logits.

``M[i, j]`` is the logit that candidate i beats candidate j (the diagonal is 0 and ignored).
Two families share the cache logic:

* :class:`ScalarJudge` scores each response alone (embedded judge, reward models):
  ``M[i, j] = scale * (r_i - r_j)``, a Bradley-Terry matrix (antisymmetric). The cache holds r.
* :class:`PairwiseJudge` judges ordered pairs (PairRM, LLM judges): the cache holds the raw value
  of each ordered pair (a, b) and :meth:`PairwiseJudge.combine` turns the K x K raw values into M.

``rspo.winrate.select_pair`` reads M through ``s_i = mean_j (M[i, j] - M[j, i])``, so a judge that
returns each order's raw logit (PairRM, as LLM-Blender's ``_full_predict``) is order-debiased there.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from rspo.config import JudgeConfig
from rspo.errors import RSPOError
from rspo.preference.cache import JudgeCache, judgement_key


def debiased_logit(m: np.ndarray, i: int, j: int) -> float:
    """The order-debiased logit that candidate i beats j: ``(M[i, j] - M[j, i]) / 2``.

    Equals ``M[i, j]`` for the antisymmetric judges (embedded, reward model, LLM); for PairRM it is
    the mean of the two orders' logits (half of LLM-Blender's ``compare`` default ``[A,B]+[B,A]``).
    Use it wherever one pair's preference is needed (e.g. P(i beats j) = sigmoid of it).
    """
    return float(m[i, j] - m[j, i]) / 2.0


def _check_inputs(prompts: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> None:
    if len(prompts) != len(candidate_lists):
        raise ValueError(f"{len(prompts)} prompts but {len(candidate_lists)} candidate lists")
    for n, (prompt, cands) in enumerate(zip(prompts, candidate_lists)):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {n} is {type(prompt).__name__}, expected str")
        if isinstance(cands, str) or not all(isinstance(c, str) for c in cands):
            raise TypeError(f"candidates of prompt {n} must be a list of strings")


class Judge(ABC):
    """A deterministic preference oracle; see the module docstring for the meaning of M."""

    name: str  # stable; used in results (the ``judge`` field) and in the cache key

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self._cache = JudgeCache(cfg.cache_dir) if cfg.cache_dir else None

    def check_options(self, allowed) -> None:
        """Reject ``cfg.options`` keys this judge does not know, naming the allowed ones."""
        unknown = set(self.cfg.options) - set(allowed)
        if unknown:
            raise RSPOError(
                f"judge {self.cfg.name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )

    def settings(self) -> dict:
        """Everything besides the name that changes the judge's numbers (part of the cache key)."""
        return {"model": self.cfg.model, "options": self.cfg.options}

    @property
    def cache_key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return f"{self.name}#{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def compare(self, prompt: str, candidates: Sequence[str]) -> np.ndarray:
        """The K x K logits of one prompt's candidates."""
        return self.compare_many([prompt], [candidates])[0]

    @abstractmethod
    def compare_many(self, prompts: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One K_n x K_n matrix per prompt, computed in batches across all prompts."""

    def _cached(self, keys: list[str], compute) -> dict[str, float]:
        """Values for ``keys``: read from the cache, ``compute(missing_keys) -> values`` for the rest."""
        found = self._cache.get_many(keys) if self._cache is not None else {}
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            values = compute(missing)
            new = {k: float(v) for k, v in zip(missing, values)}
            if self._cache is not None:  # NaN/inf verdicts are not cached: a rescoring asks again
                self._cache.put_many({k: v for k, v in new.items() if math.isfinite(v)})
            found.update(new)
        return found


class ScalarJudge(Judge):
    """A judge that scores each response alone: ``M[i, j] = scale * (r_i - r_j)``."""

    @property
    def scale(self) -> float:
        return 1.0

    @abstractmethod
    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Uncached r of each (prompt, response) pair, in one batched pass."""

    def scores_many(self, prompts: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """r of every candidate, per prompt (cached)."""
        _check_inputs(prompts, candidate_lists)
        items: dict[str, tuple[str, str]] = {}
        per_prompt = []
        for prompt, cands in zip(prompts, candidate_lists):
            keys = [judgement_key(self.cache_key, prompt, c) for c in cands]
            items.update({k: (prompt, c) for k, c in zip(keys, cands)})
            per_prompt.append(keys)

        def compute(missing: list[str]) -> np.ndarray:
            return self.score([items[k][0] for k in missing], [items[k][1] for k in missing])

        values = self._cached(list(items), compute)
        return [np.array([values[k] for k in keys], dtype=np.float64) for keys in per_prompt]

    def compare_many(self, prompts, candidate_lists):
        return [self.scale * (r[:, None] - r[None, :]) for r in self.scores_many(prompts, candidate_lists)]


class PairwiseJudge(Judge):
    """A judge of ordered pairs (a, b); :meth:`combine` maps the raw K x K values to M."""

    @abstractmethod
    def judge_pairs(self, triples: list[tuple[str, str, str]]) -> np.ndarray:
        """Uncached raw value of each (prompt, a, b), a judged first, in batches."""

    def combine(self, raw: np.ndarray) -> np.ndarray:
        """Raw ordered-pair values -> M (default: as is, diagonal 0)."""
        m = raw.copy()
        np.fill_diagonal(m, 0.0)
        return m

    def compare_many(self, prompts, candidate_lists):
        _check_inputs(prompts, candidate_lists)
        items: dict[str, tuple[str, str, str]] = {}
        per_prompt = []
        for prompt, cands in zip(prompts, candidate_lists):
            k = len(cands)
            cells = {}
            for i in range(k):
                for j in range(k):
                    if i != j:
                        key = judgement_key(self.cache_key, prompt, cands[i], cands[j])
                        items[key] = (prompt, cands[i], cands[j])
                        cells[(i, j)] = key
            per_prompt.append((k, cells))

        def compute(missing: list[str]) -> np.ndarray:
            return self.judge_pairs([items[key] for key in missing])

        values = self._cached(list(items), compute)
        out = []
        for k, cells in per_prompt:
            raw = np.zeros((k, k), dtype=np.float64)
            for (i, j), key in cells.items():
                raw[i, j] = values[key]
            out.append(self.combine(raw))
        return out
