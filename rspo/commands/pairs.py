"""``rspo pairs``: estimate win rates and pick one chosen/rejected pair per prompt.

Joins the ``responses`` and ``preferences`` tables by ``prompt_id``, runs
:func:`rspo.winrate.select_pair` on each K x K logit matrix and writes the ``pairs`` table (plus
``num_candidates`` = K). Prompts whose K scores are all equal carry no preference signal: they are
dropped and counted in the stats JSON, never trained with chosen == rejected. Prompts whose matrix
holds a null, NaN or infinite off-diagonal entry (a judge that gave no usable verdict) are dropped
and counted the same way (``n_dropped_non_finite``), never trained on. When the responses carry
the sampled ``token_ids``, the pair carries the chosen and rejected ones
(``chosen_token_ids``, ``rejected_token_ids``): ``rspo logps`` and ``rspo train`` score exactly those.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table (K per prompt)")
    parser.add_argument("--preferences", required=True, type=Path, help="preferences table (K x K logits)")
    parser.add_argument("--out", required=True, type=Path, help="pairs table to write")
    parser.add_argument(
        "--stats", type=Path, default=None, help="stats JSON to write (counts, mean win rates)"
    )


def has_non_finite(logits: list) -> bool:
    """Whether an off-diagonal entry of a K x K matrix is null, NaN or infinite (the diagonal is ignored)."""
    return any(
        i != j and (v is None or (isinstance(v, float) and not math.isfinite(v)))
        for i, row in enumerate(logits)
        for j, v in enumerate(row)
    )


def build_pairs(
    responses: list[dict], preferences: list[dict], responses_path: Path, preferences_path: Path
) -> tuple[list[dict], dict]:
    """Pair rows and the stats mapping; raises ArtifactError naming the file and prompt_id on a mismatch."""
    from tqdm import tqdm

    from rspo.artifacts import ArtifactError
    from rspo.winrate import select_pair

    prefs: dict[str, dict] = {}
    for row in preferences:
        if row["prompt_id"] in prefs:
            raise ArtifactError(f"{preferences_path}: prompt_id {row['prompt_id']!r} appears twice")
        prefs[row["prompt_id"]] = row
    judges = sorted({row["judge"] for row in preferences})
    if len(judges) > 1:
        raise ArtifactError(f"{preferences_path}: rows come from several judges {judges}; expected one")

    seen: set[str] = set()
    pairs: list[dict] = []
    dropped: list[str] = []
    non_finite: list[str] = []
    for row in tqdm(responses, desc="pairs", unit="prompt"):
        pid = row["prompt_id"]
        if pid in seen:
            raise ArtifactError(f"{responses_path}: prompt_id {pid!r} appears twice")
        seen.add(pid)
        if pid not in prefs:
            raise ArtifactError(
                f"{preferences_path}: no preference row for prompt_id {pid!r} of {responses_path}"
            )
        candidates = row["responses"]
        logits = prefs[pid]["logits"]
        k = len(candidates)
        if len(logits) != k or any(not isinstance(r, list) or len(r) != k for r in logits):
            raise ArtifactError(
                f"{preferences_path}: prompt_id {pid!r}: logits are not {k} x {k} "
                f"({k} responses in {responses_path})"
            )
        if has_non_finite(logits):
            non_finite.append(pid)
            continue
        ids = row.get("token_ids")  # the ids themselves are checked where they are scored (rspo.logps)
        if ids is not None and (len(ids) != k or not all(isinstance(t, list) for t in ids)):
            raise ArtifactError(f"{responses_path}: prompt_id {pid!r}: token_ids must be {k} lists of ints")
        try:
            sel = select_pair(logits)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{preferences_path}: prompt_id {pid!r}: {exc}") from None
        if sel is None:
            dropped.append(pid)
            continue
        pairs.append(
            {
                "prompt_id": pid,
                "prompt": row["prompt"],
                "chosen": candidates[sel.chosen],
                "rejected": candidates[sel.rejected],
                "chosen_index": sel.chosen,
                "rejected_index": sel.rejected,
                "p_chosen": sel.p_chosen,
                "p_rejected": sel.p_rejected,
                "scores": [float(s) for s in sel.scores],
                "num_candidates": k,
                **({} if ids is None else {"chosen_token_ids": ids[sel.chosen],
                                           "rejected_token_ids": ids[sel.rejected]}),
            }
        )
    extra = sorted(set(prefs) - seen)
    if extra:
        raise ArtifactError(
            f"{preferences_path}: {len(extra)} prompt_id(s) absent from {responses_path}, e.g. {extra[0]!r}"
        )

    n = len(pairs)
    stats = {
        "n_prompts": len(responses),
        "n_pairs": n,
        "n_dropped_no_signal": len(dropped),
        "n_dropped_non_finite": len(non_finite),
        "mean_p_chosen": sum(p["p_chosen"] for p in pairs) / n if n else None,
        "mean_p_rejected": sum(p["p_rejected"] for p in pairs) / n if n else None,
        "judge": judges[0] if judges else None,
        "dropped_prompt_ids": dropped,
        "dropped_non_finite_prompt_ids": non_finite,
    }
    return pairs, stats


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import read_table, write_json, write_table
    from rspo.errors import RSPOError

    responses = read_table(args.responses, "responses")
    preferences = read_table(args.preferences, "preferences")
    pairs, stats = build_pairs(responses, preferences, args.responses, args.preferences)
    if stats["n_dropped_non_finite"]:
        log.warning(
            "%d of %d prompts dropped: the judge gave null/NaN/inf preferences (e.g. %r); see %s",
            stats["n_dropped_non_finite"], stats["n_prompts"], stats["dropped_non_finite_prompt_ids"][0],
            args.preferences,
        )
    if not pairs:
        raise RSPOError(
            f"no prompt of {args.responses} has a preference signal "
            f"({stats['n_dropped_no_signal']} of {stats['n_prompts']} dropped: all scores equal; "
            f"{stats['n_dropped_non_finite']} dropped: non-finite judge output): nothing to train on"
        )
    write_table(args.out, pairs, "pairs")
    if args.stats is not None:
        write_json(args.stats, stats)
    log.info(
        "%d pairs from %d prompts (%d dropped: no signal, %d: non-finite); mean p_chosen %.4f, p_rejected %.4f -> %s",
        stats["n_pairs"],
        stats["n_prompts"],
        stats["n_dropped_no_signal"],
        stats["n_dropped_non_finite"],
        stats["mean_p_chosen"],
        stats["mean_p_rejected"],
        args.out,
    )
    return 0
