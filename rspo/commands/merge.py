"""``rspo merge``: join the parts of a sharded step (``--shard i/N``) into the step's artefact.

``--kind`` names the artefact: ``responses`` (parts of ``rspo generate``; ``--source`` = the
prompts table), ``preferences`` (parts of ``rspo score``; ``--source`` = the responses table) or
``pairs_logps`` (``pairs_logps_part`` parts of ``rspo logps``; ``--source`` = the pairs table).
The parts must cover every prompt of ``--source`` exactly once (a prompt missing, twice, or not in
the source is an error naming the part and the prompt id); the merged rows follow the source's
order and are written atomically, byte-identical to what the unsharded step writes
(:mod:`rspo.sharding`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# merged kind -> (kind of its parts, kind of --source: the table the sharded step read)
KINDS: dict[str, tuple[str, str]] = {
    "responses": ("responses", "prompts"),
    "preferences": ("preferences", "responses"),
    "pairs_logps": ("pairs_logps_part", "pairs"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=sorted(KINDS), help="the artefact to write")
    parser.add_argument(
        "--source",
        required=True,
        type=Path,
        help="the table the sharded step read (prompts / responses / pairs): the parts must cover its "
        "prompts exactly once, and the merged rows follow its order",
    )
    parser.add_argument("--out", required=True, type=Path, help="merged table to write")
    parser.add_argument("parts", nargs="+", type=Path, help="the parts written by the step's --shard i/N runs")


def merge(kind: str, source_rows: list[dict], parts: list[tuple[str, list[dict]]], source: str) -> list[dict]:
    """The merged rows of ``kind`` from the parts' rows (``(name, rows)`` each); see the module doc."""
    from rspo.artifacts import ArtifactError
    from rspo.sharding import merge_rows

    expected = [row["prompt_id"] for row in source_rows]
    if kind == "pairs_logps":
        from rspo.commands.logps import assemble, part_key

        found = merge_rows(parts, expected, source, key=part_key, prompt_of=lambda k: k[0])
        return assemble(source_rows, found, source)
    found = merge_rows(parts, expected, source)
    merged = [found[pid] for pid in expected]
    if kind == "responses":
        for src, row in zip(source_rows, merged, strict=True):
            if row["prompt"] != src["prompt"]:
                raise ArtifactError(
                    f"prompt_id {src['prompt_id']!r}: the part's prompt differs from {source}'s (a stale part?)"
                )
    return merged


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import read_table, write_table

    part_kind, source_kind = KINDS[args.kind]
    source_rows = read_table(args.source, source_kind)
    parts = [(str(p), read_table(p, part_kind)) for p in args.parts]
    rows = merge(args.kind, source_rows, parts, str(args.source))
    n = write_table(args.out, rows, args.kind)
    log.info("merged %d parts into %d %s rows -> %s", len(parts), n, args.kind, args.out)
    return 0
