"""``rspo logps``: cache log pi_t and log mu of every chosen/rejected response, once per iteration.

Reads a ``pairs`` table, scores each pair's chosen and rejected response under the last iterate
pi_t (``--last-model``, the model that generated them) and under the reference mu
(``--ref-model``) with :func:`rspo.logps.pair_logps`, and writes the ``pairs_logps`` table (the pair
fields plus ``last_logp_*``, ``ref_logp_*`` and ``*_tokens``). Training then holds one model only.

One model is in memory at a time. When both references name the same model (iteration 1:
pi_0 = mu) it is loaded and scored once and the sums are reused. Each model is scored with its own
tokenizer; token counts are those of the last model's tokenizer (the one the policy shares). The
pairs' sampled token ids (``chosen_token_ids`` / ``rejected_token_ids``, ids of the last model's
tokenizer) are scored as they are; a reference model whose tokenizer has another vocabulary scores
the response texts instead (tokenized with its own tokenizer, a warning says so).
Tokenization, truncation (``max_length`` / ``max_prompt_length``) and precision come from the
``TrainConfig`` given as ``--params``, so the cache matches the trainer's own forward passes.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="pairs table (rspo pairs)")
    parser.add_argument("--last-model", required=True, help="pi_t: the model that generated the responses")
    parser.add_argument("--ref-model", required=True, help="mu: the reference (base) model")
    parser.add_argument("--out", required=True, type=Path, help="pairs_logps table to write")
    parser.add_argument("--params", default=None, help="TrainConfig as JSON (or @file.yaml)")


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (same resolved folder, or the same hub id)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


ID_FIELDS = ("chosen_token_ids", "rejected_token_ids")


def same_vocabulary(a: str, b: str) -> bool:
    """Whether two models' tokenizers map the same tokens to the same ids (sampled ids mean the same)."""
    from rspo.models import load_tokenizer

    return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def score_model(ref: str, rows: list[dict], cfg, what: str) -> list[dict]:
    """Load ``ref``, score every pair, free the model; see :func:`rspo.logps.pair_logps`."""
    import gc

    import torch

    from rspo.chat import count_over_budget
    from rspo.logps import pair_logps, resolve_precision
    from rspo.models import default_device, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(ref)
    over = count_over_budget(tokenizer, list(dict.fromkeys(r["prompt"] for r in rows)), cfg.max_prompt_length)
    if over:  # truncated per config and counted (rspo.logps.encode_group)
        log.warning("%s: %d prompts are longer than train.max_prompt_length = %d tokens: where prompt + response "
                    "exceeds train.max_length = %d they keep their last %d tokens", what, over,
                    cfg.max_prompt_length, cfg.max_length, cfg.max_prompt_length)
    model = load_causal_lm(ref, dtype="fp32", device=default_device())  # bf16 = autocast, as in training
    try:
        return pair_logps(
            model,
            tokenizer,
            rows,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
            batch_size=cfg.logps_batch_size,
            mixed_precision=resolve_precision(cfg.precision),
            desc=f"logps {what}",
        )
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cache_logps(rows: list[dict], last_model: str, ref_model: str, cfg, source: str = "pairs") -> list[dict]:
    """``pairs`` rows -> ``pairs_logps`` rows (a new list; every input field is kept)."""
    from rspo.errors import RSPOError
    from rspo.train import check_config

    check_config(cfg)
    last = score_model(last_model, rows, cfg, "pi_t")
    if same_model(last_model, ref_model):
        log.info("last model and reference are the same model (%s): scored once", last_model)
        ref = last
    else:
        ref_rows = rows
        if any("chosen_token_ids" in r or "rejected_token_ids" in r for r in rows) and not same_vocabulary(
            last_model, ref_model
        ):
            log.warning("the reference %s has another vocabulary than %s: it scores the response texts, not the "
                        "sampled token ids", ref_model, last_model)
            ref_rows = [{k: v for k, v in r.items() if k not in ID_FIELDS} for r in rows]
        ref = score_model(ref_model, ref_rows, cfg, "mu")
    out = []
    for row, lv, rv in zip(rows, last, ref):
        values = {
            "last_logp_chosen": lv["logp_chosen"],
            "last_logp_rejected": lv["logp_rejected"],
            "ref_logp_chosen": rv["logp_chosen"],
            "ref_logp_rejected": rv["logp_rejected"],
        }
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise RSPOError(f"{source}: prompt_id {row['prompt_id']!r}: non-finite log-prob(s) {bad}: {values}")
        out.append({**row, **values, "chosen_tokens": lv["chosen_tokens"], "rejected_tokens": lv["rejected_tokens"]})
    return out


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import read_table, write_table
    from rspo.config import TrainConfig, parse_params
    from rspo.errors import RSPOError

    cfg = parse_params(args.params, TrainConfig)
    rows = read_table(args.pairs, "pairs")
    if not rows:
        raise RSPOError(f"{args.pairs}: no pairs to score")
    out = cache_logps(rows, args.last_model, args.ref_model, cfg, source=str(args.pairs))
    write_table(args.out, out, "pairs_logps")
    log.info("cached log-probs of %d pairs -> %s", len(out), args.out)
    return 0
