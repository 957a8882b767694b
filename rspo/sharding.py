"""Sharding a step over N independent jobs, and merging their parts into the step's artefact.

A sharded step (``generate``, ``score``, ``logps``) cuts its work into UNITS exactly as the unsharded
step does: a batch of the generation's longest-first prompt order (``batch_size`` prompts), a chunk
of ``score``'s prompts in input order (``CHUNK_PROMPTS``), a batch of ``logps``'s longest-first
sequence order (``logps_batch_size`` sequences, per model). The units are a function of the WHOLE
input and the step's own parameters, never of the shard count; shard ``i/N`` runs the units
``i-1, i-1+N, i-1+2N, ...`` (round robin, so the long units of a longest-first order spread over
every shard). Every unit therefore holds the same rows, padded the same way, whatever N is, and
every number it produces is the one the unsharded step produces: the merged artefact is
byte-identical for every N (the seeds of the samples are per prompt and sample already,
``rspo.generation.sample_seed``). A shard with no unit (N larger than the number of units) writes
an empty part.

:func:`merge_rows` joins the parts: it checks that they cover every prompt of the step's input
exactly once (no prompt missing, none twice, none foreign) and returns the rows in the input's
order; ``rspo merge`` writes them atomically. The vLLM backend batches requests itself (continuous
batching), so its samples are the same per request only as far as vLLM is batch-invariant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rspo.artifacts import ArtifactError
from rspo.errors import RSPOError

T = TypeVar("T")

SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*(?:/|-of-)\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise RSPOError(f"shard {self.index}/{self.count}: need 1 <= i <= N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """``"i/N"`` (or ``"i-of-N"``, the workflow's file-name form) -> Shard; None/empty -> None."""
    if text is None or not str(text).strip():
        return None
    match = SHARD_PATTERN.match(str(text))
    if not match:
        raise RSPOError(f"--shard {text!r}: expected i/N, e.g. 2/3 (the second of three shards)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_units(num_units: int, shard: Shard | None) -> list[int]:
    """Indices of the units shard ``i/N`` runs: ``i-1, i-1+N, ...`` below ``num_units`` (all if None)."""
    if shard is None:
        return list(range(num_units))
    return list(range(shard.index - 1, num_units, shard.count))


def select(units: Sequence[T], shard: Shard | None) -> list[T]:
    """The units of ``shard`` (in their global order)."""
    return [units[u] for u in shard_units(len(units), shard)]


def chunks(num_items: int, size: int) -> list[list[int]]:
    """Consecutive chunks of ``size`` item indices (the last may be shorter)."""
    if size < 1:
        raise RSPOError(f"chunk size {size}: need >= 1")
    return [list(range(start, min(start + size, num_items))) for start in range(0, num_items, size)]


def longest_first_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices sorted by length, longest first (ties keep input order), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [[order[i] for i in chunk] for chunk in chunks(len(order), batch_size)]


def num_chunks(num_items: int, size: int) -> int:
    return math.ceil(num_items / size)


# --------------------------------------------------------------------------- merging


def merge_rows(
    parts: Sequence[tuple[str, list[dict[str, Any]]]],
    expected: Sequence[str],
    source: str,
    key: Callable[[dict[str, Any]], Any] = lambda row: row["prompt_id"],
    prompt_of: Callable[[Any], str] = lambda k: k,
) -> dict[Any, dict[str, Any]]:
    """``{key: row}`` of the parts' rows, checked to cover the prompt ids ``expected`` (those of
    ``source``) exactly once: a key seen twice, a row of a foreign prompt, or a prompt without a
    row raises ArtifactError naming the part(s) and the prompt id."""
    found: dict[Any, tuple[str, dict[str, Any]]] = {}
    wanted = set(expected)
    if len(wanted) != len(expected):
        raise ArtifactError(f"{source}: a prompt_id appears twice; cannot tell which row a part covers")
    for name, rows in parts:
        for row in rows:
            k = key(row)
            if k in found:
                raise ArtifactError(f"{name}: {_show(k)} also appears in {found[k][0]} (shards must not overlap)")
            if prompt_of(k) not in wanted:
                raise ArtifactError(f"{name}: prompt_id {prompt_of(k)!r} is not in {source} (a part of another input?)")
            found[k] = (name, row)
    covered = {prompt_of(k) for k in found}
    missing = [pid for pid in expected if pid not in covered]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ArtifactError(
            f"{len(missing)} prompt(s) of {source} are in no part ({shown}): a shard is missing or stale"
        )
    return {k: row for k, (_, row) in found.items()}


def _show(k: Any) -> str:
    return f"prompt_id {k!r}" if isinstance(k, str) else "row " + " ".join(repr(x) for x in k)
