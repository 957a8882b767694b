"""``rspo train``: train pi_{t+1} on a ``pairs_logps`` table with the SPPO loss plus lambda * R.

One model and one optimizer in memory (the cached log-probs stand in for the frozen pi_t and mu);
see :mod:`rspo.train`. Resumes from ``OUT.partial/`` when restarted after a kill. Runs under
``accelerate launch`` (DDP, DeepSpeed ZeRO-3, FSDP) unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="pairs_logps table (rspo logps)")
    parser.add_argument("--model", required=True, help="the policy to start from (pi_t): local folder or hub id")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write (save_pretrained + manifest)")
    parser.add_argument("--log", required=True, type=Path, help="train_log table to write (one row per step)")
    parser.add_argument("--params", default=None, help="TrainConfig as JSON (or @file.yaml)")
    parser.add_argument("--ref-samples", type=Path, default=None,
                        help="responses table of mu's samples for the same prompts (forward_kl only)")
    parser.add_argument("--regularizers", default=None,
                        help='custom named mixtures as JSON, e.g. {"myreg": {"chi2": 0.1, "reverse_kl": 0.5}}')


def run(args: argparse.Namespace) -> int:
    from rspo.config import ConfigError, TrainConfig, parse_params
    from rspo.train import train

    cfg = parse_params(args.params, TrainConfig)
    custom = None
    if args.regularizers:
        try:
            custom = json.loads(args.regularizers)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--regularizers is not valid JSON ({exc})") from None
        if not isinstance(custom, dict):
            raise ConfigError("--regularizers must be a JSON object {name: {term: lambda}}")
    result = train(cfg, pairs=args.pairs, model=args.model, out_dir=args.out, log_path=args.log,
                   ref_samples=args.ref_samples, regularizers=custom)
    log.info("trained %d steps (final loss %.6g) -> %s", result["steps"], result["loss"], result["out_dir"])
    return 0
