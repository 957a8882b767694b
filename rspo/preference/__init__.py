"""Preference oracles: K candidates of a prompt -> K x K logits ``M[i, j]`` = logit(i beats j).

``get_judge(cfg)`` builds the judge named by ``JudgeConfig.name``:

* ``embedded`` (default): all-MiniLM-L6-v2 relevance x anti-degeneracy factors, CPU, offline
  (:mod:`rspo.preference.embedded`; a proxy, see docs/judges.md);
* ``pairrm``: PairRM on transformers 5 without llm-blender (:mod:`rspo.preference.pairrm`);
* ``reward_model``: any ``AutoModelForSequenceClassification`` reward model
  (:mod:`rspo.preference.reward_model`);
* ``llm``: an LLM asked for a pairwise verdict, both orders, through an OpenAI-compatible endpoint
  or a local vLLM model (:mod:`rspo.preference.llm`).

Every judge is deterministic and caches its judgements under ``cfg.cache_dir`` when set.
Modules are imported only for the judge asked for (torch/transformers are not imported here).
"""

from __future__ import annotations

from rspo.config import ConfigError, JudgeConfig
from rspo.preference.base import Judge, PairwiseJudge, ScalarJudge, debiased_logit

JUDGES: dict[str, tuple[str, str]] = {
    "embedded": ("rspo.preference.embedded", "EmbeddedJudge"),
    "pairrm": ("rspo.preference.pairrm", "PairRMJudge"),
    "reward_model": ("rspo.preference.reward_model", "RewardModelJudge"),
    "llm": ("rspo.preference.llm", "LLMJudge"),
}


def get_judge(cfg: JudgeConfig | None = None) -> Judge:
    """The judge named by ``cfg.name`` (default config: the embedded judge)."""
    import importlib

    cfg = cfg or JudgeConfig()
    if cfg.name not in JUDGES:
        raise ConfigError(f"judge.name: unknown judge {cfg.name!r}; allowed: {', '.join(JUDGES)}")
    module, cls = JUDGES[cfg.name]
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["JUDGES", "Judge", "PairwiseJudge", "ScalarJudge", "debiased_logit", "get_judge"]
