"""``rspo score``: the K x K preference logits of every prompt's responses, with any judge.

Reads a ``responses`` table, asks the judge of ``--params`` (a ``JudgeConfig``: ``name`` embedded |
pairrm | reward_model | llm, ``model``, ``batch_size``, ``beta``, ``cache_dir``, ``options``) for
each prompt's matrix and writes the ``preferences`` table: one row per prompt with ``prompt_id``,
``judge`` (the judge's name), ``logits`` (K x K, ``logits[i][j]`` = logit that response i beats j,
diagonal 0) and ``K``. Prompts are judged in chunks (batched inside each chunk); with
``cache_dir`` set, judgements already made cost nothing. ``--shard i/N`` judges every N-th chunk
only (:mod:`rspo.sharding`); ``rspo merge --kind preferences`` joins the parts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_PROMPTS = 16  # prompts per compare_many call (one progress-bar step each)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table (K per prompt)")
    parser.add_argument("--out", required=True, type=Path, help="preferences table to write")
    parser.add_argument("--params", default=None, help="JudgeConfig as JSON, or @file.yaml (default: embedded)")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help=f"score only shard I of N: every N-th chunk of {CHUNK_PROMPTS} prompts (its preferences rows); "
        "`rspo merge --kind preferences` joins the N parts",
    )


def score_rows(responses: list[dict], judge, chunk: int = CHUNK_PROMPTS, shard=None) -> list[dict]:
    """The ``preferences`` rows of ``responses`` under ``judge``; with ``shard`` (rspo.sharding) only
    those of its chunks (every N-th chunk of ``chunk`` prompts of the whole table, in input order)."""
    from tqdm import tqdm

    from rspo.sharding import chunks, select

    selected = select(chunks(len(responses), chunk), shard)
    rows: list[dict] = []
    with tqdm(total=sum(map(len, selected)), desc=f"score ({judge.name})", unit="prompt") as bar:
        for indices in selected:
            part = [responses[i] for i in indices]
            mats = judge.compare_many([r["prompt"] for r in part], [r["responses"] for r in part])
            for r, m in zip(part, mats):
                rows.append({"prompt_id": r["prompt_id"], "judge": judge.name, "logits": m.tolist(), "K": len(m)})
            bar.update(len(part))
    return rows


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import ArtifactError, read_table, write_table
    from rspo.config import JudgeConfig, parse_params
    from rspo.preference import get_judge
    from rspo.sharding import num_chunks, parse_shard, shard_units

    cfg = parse_params(args.params, JudgeConfig)
    shard = parse_shard(args.shard)
    responses = read_table(args.responses, "responses")
    seen: set[str] = set()
    for row in responses:
        if row["prompt_id"] in seen:
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r} appears twice")
        seen.add(row["prompt_id"])
        if not all(isinstance(c, str) for c in row["responses"]):
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r}: responses must be strings")
    if shard is not None and not shard_units(num_chunks(len(responses), CHUNK_PROMPTS), shard):
        write_table(args.out, [], "preferences")
        log.info("shard %s has no chunk of the %d prompts: wrote an empty part %s", shard, len(responses), args.out)
        return 0
    judge = get_judge(cfg)
    rows = score_rows(responses, judge, max(1, CHUNK_PROMPTS), shard)
    n = write_table(args.out, rows, "preferences")
    log.info("wrote %d preference matrices (judge %s%s) to %s", n, judge.name, f", shard {shard}" if shard else "",
             args.out)
    return 0
