"""``rspo metrics``: win rate, length-controlled win rate and length of an annotations file.

Prints (``--json``) or writes (``--out``) one JSON object: ``win_rate``, ``standard_error``,
``n_total``, ``avg_length``, ``length_controlled_winrate``, ``lc_standard_error``, ``lc_method``
(plus ``n_wins``, ``n_wins_base``, ``n_draws``, ``discrete_win_rate``, ``generator``, ``reference``,
``annotator``), computed with alpaca_eval's own functions; see ``rspo.evaluation.metrics``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rspo.evaluation.metrics import LC_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", type=Path, help="alpaca_eval annotations JSON (rspo annotate / alpaca_eval)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument(
        "--df-gamed",
        type=Path,
        default=None,
        help="alpaca_eval's df_gamed.csv (hub dataset tatsu-lab/alpaca_eval): enables the official LC",
    )
    parser.add_argument("--out", type=Path, default=None, help="metrics JSON to write")
    parser.add_argument(
        "--lc-method",
        choices=LC_METHODS,
        default="auto",
        help="auto = length_controlled_v1 with --df-gamed, else approx_fixed_length_slope",
    )


def run(args) -> int:
    from rspo.artifacts import write_json
    from rspo.evaluation.metrics import compute_metrics, load_annotations

    rows = load_annotations(args.annotations)
    out = compute_metrics(rows, df_gamed=args.df_gamed, lc_method=args.lc_method, where=str(args.annotations))
    if args.out:
        write_json(args.out, out)
    if args.json:
        print(json.dumps(out))
    elif not args.out:
        for key, value in out.items():
            print(f"{key:28s} {value}")
    return 0
