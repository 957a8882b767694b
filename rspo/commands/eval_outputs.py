"""``rspo eval-outputs``: a ``responses`` table (n = 1) -> alpaca_eval ``model_outputs.json``.

Rows keep the prompt order. The shared AlpacaEval set (``eval_set.json``: dataset, instruction,
output, generator) needs no conversion: ``rspo prepare-prompts`` reads its ``instruction`` column
into a prompts table, and the file itself is the reference of ``rspo annotate --reference``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table with one response per prompt")
    parser.add_argument("--out", required=True, type=Path, help="model_outputs.json to write")
    parser.add_argument(
        "--generator", default=None, help="model name written in `generator` (default: the responses' generator)"
    )
    parser.add_argument(
        "--dataset-field",
        default="dataset",
        help="row field holding the dataset/subset name, used when present (default: dataset)",
    )
    parser.add_argument("--dataset", default="rspo", help="dataset name for rows without that field (default: rspo)")


def run(args) -> int:
    from rspo.artifacts import ArtifactError, read_table, write_json
    from rspo.evaluation.outputs import responses_to_model_outputs

    rows = read_table(args.responses, "responses")
    if not rows:
        raise ArtifactError(f"{args.responses}: no rows (expected one response per evaluation prompt)")
    outputs = responses_to_model_outputs(
        rows, generator=args.generator, dataset=args.dataset, dataset_field=args.dataset_field, where=str(args.responses)
    )
    write_json(args.out, outputs)
    log.info("wrote %d outputs of %s to %s", len(outputs), outputs[0]["generator"] if outputs else "-", args.out)
    return 0
