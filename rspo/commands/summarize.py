"""``rspo summarize``: ``summary.{csv,md}``, ``plots/winrate.png`` and ``paper_comparison.md`` in ``--out-dir``.

``--index`` is a JSON list of ``{"reg", "iteration", "metrics", "self_bleu", "train_log",
"pairs_stats"}`` (docs/pipeline.md); see ``rspo.evaluation.summary`` for the outputs. With
``--manifest`` it also writes the run manifest of ``results/`` (``rspo.artifacts.manifest``): the
workflow's config (``--run-config``), versions, and the sha256 of every file of the index.
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
    parser.add_argument("--manifest", type=Path, default=None, help="write the run manifest (JSON) here")
    parser.add_argument("--run-config", default="{}",
                        help="the workflow's resolved config as a JSON object, recorded in the manifest")


def index_files(index: list) -> dict[str, str]:
    """``{"<reg>/iter<t>/<key>": path}`` of every file an index names (pi_0's files once)."""
    files: dict[str, str] = {}
    for row in index:
        for key in ("metrics", "self_bleu", "train_log", "pairs_stats"):
            if row.get(key) and row[key] not in files.values():
                files[f"{row['reg']}/iter{row['iteration']}/{key}"] = row[key]
    return files


def run(args) -> int:
    import json

    from rspo.artifacts import manifest, read_json, write_json
    from rspo.errors import RSPOError
    from rspo.evaluation.summary import summarize

    try:
        run_config = json.loads(args.run_config)
    except json.JSONDecodeError as exc:
        raise RSPOError(f"--run-config: not valid JSON ({exc})") from None
    if not isinstance(run_config, dict):
        raise RSPOError("--run-config: expected a JSON object")
    index = read_json(args.index)
    rows = summarize(index, args.out_dir, where=str(args.index), base_model=args.policy)
    if args.manifest is not None:
        write_json(args.manifest, manifest(run_config, {"index": args.index, **index_files(index)}))
    log.info("summarised %d iterates into %s", len(rows), args.out_dir)
    return 0
