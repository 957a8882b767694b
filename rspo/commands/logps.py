"""``rspo logps``: cache log pi_t and log mu of every chosen/rejected response, once per iteration.

Reads a ``pairs`` table, scores each pair's chosen and rejected response under the last iterate
pi_t (``--last-model``, the model that generated them) and under the reference mu
(``--ref-model``) with :func:`rspo.logps.score`, and writes the ``pairs_logps`` table (the pair
fields plus ``last_logp_*``, ``ref_logp_*`` and ``*_tokens``). Training then holds one model only.

``--shard i/N`` scores only shard i's batches of each model's longest-first order over the WHOLE
table (:mod:`rspo.sharding`) and writes a ``pairs_logps_part`` table (one row per scored sequence);
``rspo merge --kind pairs_logps`` joins the N parts with the same :func:`assemble` the unsharded
step uses, so the merged table is byte-identical to the unsharded one.

One model is in memory at a time. When both references name the same model (iteration 1:
pi_0 = mu) it is loaded and scored once and the sums are reused. Each model is scored with its own
tokenizer; token counts are those of the last model's tokenizer (the one the policy shares). The
pairs' sampled token ids (``chosen_token_ids`` / ``rejected_token_ids``, ids of the last model's
tokenizer) are scored as they are; a reference model whose tokenizer has another vocabulary scores
the response texts instead (tokenized with its own tokenizer, a warning says so).
Tokenization, truncation (``max_length`` / ``max_prompt_length``), precision and the log-prob chunk
size (``logps_chunk_size``) come from the
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
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="score only shard I of N (batches of the whole input's longest-first order, round robin) and "
        "write a pairs_logps_part table to --out; `rspo merge --kind pairs_logps` joins the N parts",
    )


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (same resolved folder, or the same hub id)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


ID_FIELDS = ("chosen_token_ids", "rejected_token_ids")
RESPONSES = ("chosen", "rejected")  # sequence 2i is pair i's chosen response, 2i + 1 its rejected


def same_vocabulary(a: str, b: str) -> bool:
    """Whether two models' tokenizers map the same tokens to the same ids (sampled ids mean the same)."""
    from rspo.models import load_tokenizer

    return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def score_model(ref: str, rows: list[dict], cfg, what: str, shard=None) -> tuple[list, list]:
    """Load ``ref`` and score the pairs' sequences ``[chosen_0, rejected_0, chosen_1, ...]``:
    (sums, counts) per sequence, see :func:`rspo.logps.score`. With ``shard`` only its batches are
    scored (None elsewhere), and a shard without a batch loads no model."""
    import gc

    import torch

    from rspo.chat import count_over_budget
    from rspo.logps import encode_pairs, pad_token_id, resolve_precision, score
    from rspo.models import default_device, load_causal_lm, load_tokenizer
    from rspo.sharding import num_chunks, shard_units

    n = 2 * len(rows)
    if shard is not None and not shard_units(num_chunks(n, cfg.logps_batch_size), shard):
        log.info("shard %s has no batch of the %d sequences: nothing to score under %s", shard, n, what)
        return [None] * n, [None] * n
    tokenizer = load_tokenizer(ref)
    over = count_over_budget(tokenizer, list(dict.fromkeys(r["prompt"] for r in rows)), cfg.max_prompt_length)
    if over:  # truncated per config and counted (rspo.logps.encode_group)
        log.warning("%s: %d prompts are longer than train.max_prompt_length = %d tokens: where prompt + response "
                    "exceeds train.max_length = %d they keep their last %d tokens", what, over,
                    cfg.max_prompt_length, cfg.max_length, cfg.max_prompt_length)
    seqs = encode_pairs(tokenizer, rows, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    model = load_causal_lm(ref, dtype="fp32", device=default_device())  # bf16 = autocast, as in training
    try:
        return score(
            model,
            seqs,
            pad_id=pad_token_id(tokenizer),
            batch_size=cfg.logps_batch_size,
            mixed_precision=resolve_precision(cfg.precision),
            desc=f"logps {what}",
            shard=shard,
            chunk_size=cfg.logps_chunk_size,
        )
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def part_rows(rows: list[dict], last_model: str, ref_model: str, cfg, shard=None, source: str = "pairs") -> list[dict]:
    """``pairs_logps_part`` rows: log pi_t (``model`` "last") and log mu ("ref") of each chosen and
    rejected response that ``shard`` scores (every one without a shard)."""
    from rspo.errors import RSPOError
    from rspo.train import check_config

    check_config(cfg)
    last = score_model(last_model, rows, cfg, "pi_t", shard)
    if same_model(last_model, ref_model):
        log.info("last model and reference are the same model (%s): scored once", last_model)
        ref = last
    else:
        ref_rows = rows
        if any(k in r for r in rows for k in ID_FIELDS) and not same_vocabulary(last_model, ref_model):
            log.warning("the reference %s has another vocabulary than %s: it scores the response texts, not the "
                        "sampled token ids", ref_model, last_model)
            ref_rows = [{k: v for k, v in r.items() if k not in ID_FIELDS} for r in rows]
        ref = score_model(ref_model, ref_rows, cfg, "mu", shard)
    out = []
    for model, (sums, counts) in (("last", last), ("ref", ref)):
        for i, (value, tokens) in enumerate(zip(sums, counts, strict=True)):
            if value is None:
                continue
            pid, response = rows[i // 2]["prompt_id"], RESPONSES[i % 2]
            if not math.isfinite(value):
                raise RSPOError(f"{source}: prompt_id {pid!r}: non-finite log-prob ({value}) of the {response} "
                                f"response under the {model} model")
            out.append({"prompt_id": pid, "model": model, "response": response, "logp": value, "tokens": tokens})
    return out


def part_key(row: dict) -> tuple[str, str, str]:
    return row["prompt_id"], row["model"], row["response"]


def assemble(rows: list[dict], parts: dict[tuple[str, str, str], dict], source: str = "pairs") -> list[dict]:
    """``pairs`` rows + their sequences' ``pairs_logps_part`` rows (by :func:`part_key`) ->
    ``pairs_logps`` rows (a new list; every pair field is kept; token counts are the last model's)."""
    from rspo.artifacts import ArtifactError

    out = []
    for row in rows:
        pid = row["prompt_id"]
        got = {}
        for model in ("last", "ref"):
            for response in RESPONSES:
                if (pid, model, response) not in parts:
                    raise ArtifactError(f"{source}: prompt_id {pid!r}: no {model}-model log-prob of the "
                                        f"{response} response in any part")
                got[model, response] = parts[pid, model, response]
        values = {f"{m}_logp_{r}": got[m, r]["logp"] for m in ("last", "ref") for r in RESPONSES}
        tokens = {f"{r}_tokens": got["last", r]["tokens"] for r in RESPONSES}
        out.append({**row, **values, **tokens})
    return out


def cache_logps(rows: list[dict], last_model: str, ref_model: str, cfg, source: str = "pairs") -> list[dict]:
    """``pairs`` rows -> ``pairs_logps`` rows (a new list; every input field is kept)."""
    parts = part_rows(rows, last_model, ref_model, cfg, source=source)
    return assemble(rows, {part_key(p): p for p in parts}, source)


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import read_table, write_table
    from rspo.config import TrainConfig, parse_params
    from rspo.errors import RSPOError
    from rspo.sharding import parse_shard

    cfg = parse_params(args.params, TrainConfig)
    shard = parse_shard(args.shard)
    rows = read_table(args.pairs, "pairs")
    if not rows:
        raise RSPOError(f"{args.pairs}: no pairs to score")
    if shard is not None:
        parts = part_rows(rows, args.last_model, args.ref_model, cfg, shard, source=str(args.pairs))
        write_table(args.out, parts, "pairs_logps_part")
        log.info("shard %s: cached %d sequence log-probs of %d pairs -> %s", shard, len(parts), len(rows), args.out)
        return 0
    out = cache_logps(rows, args.last_model, args.ref_model, cfg, source=str(args.pairs))
    write_table(args.out, out, "pairs_logps")
    log.info("cached log-probs of %d pairs -> %s", len(out), args.out)
    return 0
