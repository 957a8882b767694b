"""``rspo self-bleu``: Self-BLEU of the n samples per instruction of a ``responses`` table.

Writes ``{"self_bleu", "n", "num_instructions", "tokenizer", "per_instruction"}``; the metric and the
tokenizer are described in ``rspo.evaluation.self_bleu``. Lower = more diverse.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table with n >= 2 samples per prompt")
    parser.add_argument("--out", required=True, type=Path, help="selfbleu.json to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from rspo.artifacts import ArtifactError, read_table, write_json
    from rspo.evaluation.self_bleu import TOKENIZER, self_bleu

    rows = read_table(args.responses, "responses")
    if not rows:
        raise ArtifactError(f"{args.responses}: no rows (expected n >= 2 samples per prompt)")
    sizes = sorted({len(r["responses"]) for r in rows})
    if sizes[0] < 2:
        raise ArtifactError(f"{args.responses}: Self-BLEU needs n >= 2 samples per prompt; found n = {sizes[0]}")
    value, per = self_bleu([r["responses"] for r in rows], progress=not args.no_progress)
    write_json(
        args.out,
        {
            "self_bleu": value,
            "n": sizes[0] if len(sizes) == 1 else sizes,
            "num_instructions": len(rows),
            "tokenizer": TOKENIZER,
            "per_instruction": {r["prompt_id"]: v for r, v in zip(rows, per)},
        },
    )
    log.info("Self-BLEU %.4f over %d instructions (n = %s) -> %s", value, len(rows), sizes, args.out)
    return 0
