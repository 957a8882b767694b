"""``rspo summarize``: ``summary.{csv,md}``, ``plots/winrate.png`` and ``paper_comparison.md`` in ``--out-dir``.

``--index`` is a JSON list of ``{"reg", "iteration", "metrics", "self_bleu", "train_log",
"pairs_stats"}`` (docs/pipeline.md); see ``rspo.evaluation.summary`` for the outputs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="index JSON of the metric files")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder to write the tables and figure into")
    parser.add_argument("--policy", default=None,
                        help="the run's pi_0 (hub id): picks the paper's table to compare with (default: Mistral)")


def run(args) -> int:
    from rspo.artifacts import read_json
    from rspo.evaluation.summary import summarize

    rows = summarize(read_json(args.index), args.out_dir, where=str(args.index), base_model=args.policy)
    log.info("summarised %d iterates into %s", len(rows), args.out_dir)
    return 0
