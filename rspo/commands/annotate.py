"""``rspo annotate``: pairwise judgements of model outputs against reference outputs (alpaca_eval format).

``--params`` is a ``JudgeConfig``: our judges (``embedded``, ``pairrm``, ``reward_model``, ``llm``,
through ``rspo.preference.get_judge``), ``alpaca_eval_gpt4_turbo`` (the official AlpacaEval 2.0
annotator; needs ``OPENAI_API_KEY``) or ``alpaca_eval_vllm`` (the same protocol on an
OpenAI-compatible server at ``$RSPO_JUDGE_BASE_URL``). Outputs are matched to the reference by
instruction and written in the reference's order; see ``rspo.evaluation.annotate`` for the output
order randomisation (``--seed``), ties and the cache.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", required=True, type=Path, help="model_outputs.json of the evaluated model")
    parser.add_argument("--reference", required=True, type=Path, help="reference outputs (e.g. eval_set.json)")
    parser.add_argument("--out", required=True, type=Path, help="annotations.json to write")
    parser.add_argument("--params", default=None, help="JudgeConfig as JSON, or @file.yaml (default: embedded)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-instruction output order (default 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="annotation cache folder (default: the judge's cache_dir, else .annotate_cache beside --out)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_p_second(cfg):
    """(annotator name, judge cache key, p_second function) for a JudgeConfig."""
    from rspo.evaluation import alpaca_judges
    from rspo.evaluation.annotate import judge_p_second

    if cfg.name in alpaca_judges.NAMES:
        judge = alpaca_judges.AlpacaEvalWeightedJudge(cfg)
        return judge.name, judge.cache_key, judge.p_second
    from rspo.preference import get_judge

    judge = get_judge(cfg)
    return judge.name, getattr(judge, "cache_key", judge.name), judge_p_second(judge)


def run(args) -> int:
    from rspo.artifacts import write_json
    from rspo.config import JudgeConfig, parse_params
    from rspo.evaluation.annotate import annotate_pairs
    from rspo.evaluation.outputs import match_outputs, read_outputs
    from rspo.preference.cache import JudgeCache

    cfg = parse_params(args.params, JudgeConfig)
    if cfg.prompt_form != "raw":
        from rspo.config import ConfigError

        raise ConfigError(f"evaluation.annotator.prompt_form: {cfg.prompt_form!r}; annotation judges the AlpacaEval "
                          f"instruction as it is, only 'raw' is supported")
    pairs = match_outputs(read_outputs(args.outputs), read_outputs(args.reference), args.outputs, args.reference)
    name, key, p_second = make_p_second(cfg)
    cache_dir = args.cache_dir or (Path(cfg.cache_dir) if cfg.cache_dir else args.out.parent / ".annotate_cache")
    rows = annotate_pairs(
        pairs,
        p_second,
        annotator=name,
        judge_key=key,
        seed=args.seed,
        cache=JudgeCache(cache_dir),
        batch_size=max(1, cfg.batch_size),
        progress=not args.no_progress,
    )
    write_json(args.out, rows)
    n_null = sum(r["preference"] is None for r in rows)
    log.info("wrote %d annotations (%s, %d without verdict) to %s", len(rows), name, n_null, args.out)
    return 0
