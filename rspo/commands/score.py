"""``rspo score``: the K x K preference logits of every prompt's responses, with any judge.

Reads a ``responses`` table, asks the judge of ``--params`` (a ``JudgeConfig``: ``name`` embedded |
pairrm | reward_model | llm, ``model``, ``batch_size``, ``beta``, ``cache_dir``, ``options``) for
each prompt's matrix and writes the ``preferences`` table: one row per prompt with ``prompt_id``,
``judge`` (the judge's name), ``logits`` (K x K, ``logits[i][j]`` = logit that response i beats j,
diagonal 0) and ``K``. A NaN/inf entry is written as null (strict JSON) and counted in the log;
``rspo pairs`` drops and counts that prompt. Prompts are judged in chunks (batched inside each
chunk); with ``cache_dir`` set, judgements already made cost nothing.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_PROMPTS = 16  # prompts per compare_many call (one progress-bar step each)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table (K per prompt)")
    parser.add_argument("--out", required=True, type=Path, help="preferences table to write")
    parser.add_argument("--params", default=None, help="JudgeConfig as JSON, or @file.yaml (default: embedded)")


def score_rows(responses: list[dict], judge, chunk: int = CHUNK_PROMPTS) -> list[dict]:
    """The ``preferences`` rows of ``responses`` under ``judge``."""
    import numpy as np
    from tqdm import tqdm

    rows: list[dict] = []
    bad: list[str] = []
    with tqdm(total=len(responses), desc=f"score ({judge.name})", unit="prompt") as bar:
        for start in range(0, len(responses), chunk):
            part = responses[start : start + chunk]
            mats = judge.compare_many([r["prompt"] for r in part], [r["responses"] for r in part])
            for r, m in zip(part, mats):
                logits = [[v if math.isfinite(v) else None for v in row] for row in np.asarray(m, dtype=float).tolist()]
                if any(v is None for i, row in enumerate(logits) for j, v in enumerate(row) if i != j):
                    bad.append(r["prompt_id"])
                rows.append({"prompt_id": r["prompt_id"], "judge": judge.name, "logits": logits, "K": len(m)})
            bar.update(len(part))
    if bad:
        log.warning("%d of %d prompts got NaN/inf preferences from %s (written as null; rspo pairs drops them), "
                    "e.g. %r", len(bad), len(responses), judge.name, bad[0])
    return rows


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import ArtifactError, read_table, write_table
    from rspo.config import JudgeConfig, parse_params
    from rspo.preference import get_judge

    cfg = parse_params(args.params, JudgeConfig)
    responses = read_table(args.responses, "responses")
    seen: set[str] = set()
    for row in responses:
        if row["prompt_id"] in seen:
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r} appears twice")
        seen.add(row["prompt_id"])
        if not all(isinstance(c, str) for c in row["responses"]):
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r}: responses must be strings")
    judge = get_judge(cfg)
    rows = score_rows(responses, judge, max(1, CHUNK_PROMPTS))
    n = write_table(args.out, rows, "preferences")
    log.info("wrote %d preference matrices (judge %s) to %s", n, judge.name, args.out)
    return 0
