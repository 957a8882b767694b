"""alpaca_eval ``model_outputs.json`` files: write them from ``responses`` tables, read and pair them.

An outputs file is a JSON list of ``{"instruction", "output", "generator", "dataset"}`` objects (the
format of alpaca_eval's ``model_outputs.json`` and of its reference set ``eval_set.json``). Rows are
kept in prompt order, so a file made from the 805 AlpacaEval prompts keeps the canonical order that
alpaca_eval's length-controlled GLM needs (it looks instruction difficulty up by row position).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rspo.artifacts import ArtifactError, read_json_objects

OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset")


def responses_to_model_outputs(
    rows: list[dict[str, Any]],
    generator: str | None = None,
    dataset: str = "rspo",
    dataset_field: str = "dataset",
    where: str = "responses",
) -> list[dict[str, str]]:
    """One ``model_outputs`` row per prompt of a ``responses`` table with n = 1, in prompt order.

    ``generator`` defaults to each row's ``generator`` (the model path); ``dataset`` is taken from the
    row's ``dataset_field`` when the row carries it (prompts prepared from ``eval_set.json`` keep the
    AlpacaEval subset name), else the constant ``dataset``.
    """
    out = []
    for n, row in enumerate(rows, 1):
        k = len(row["responses"])
        if k != 1:
            raise ArtifactError(
                f"{where}: row {n} (prompt_id {row['prompt_id']!r}) has {k} responses; evaluation outputs "
                "need exactly one per prompt (generate them with sampling.n = 1)"
            )
        value = row.get(dataset_field)
        out.append(
            {
                "instruction": row["prompt"],
                "output": row["responses"][0],
                "generator": generator or row["generator"],
                "dataset": value if isinstance(value, str) and value else dataset,
            }
        )
    return out


def read_outputs(path: str | Path) -> list[dict[str, Any]]:
    """Read an alpaca_eval outputs file (``model_outputs.json``, ``eval_set.json``); validates the fields."""
    data = read_json_objects(path, "{instruction, output, ...}")
    for n, row in enumerate(data):
        for name in ("instruction", "output"):
            if not isinstance(row.get(name), str):
                raise ArtifactError(f"{path}: item {n} lacks a string field {name!r}")
    return data


def _normalise(instruction: str) -> str:
    # prompt tables may strip surrounding whitespace (5 of the 805 AlpacaEval instructions carry some)
    return instruction.strip()


def match_outputs(
    model_rows: list[dict[str, Any]],
    reference_rows: list[dict[str, Any]],
    model_path: str | Path = "outputs",
    reference_path: str | Path = "reference",
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair every reference row with the model row of the same instruction, in REFERENCE order.

    Instructions are compared after stripping surrounding whitespace; a repeated instruction is
    paired by occurrence (its k-th reference row with its k-th model row). Raises
    :class:`ArtifactError` naming both files when the two sets of instructions differ.
    """
    by_instruction: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in model_rows:
        by_instruction[_normalise(row["instruction"])].append(row)
    used: dict[str, int] = defaultdict(int)
    pairs, missing = [], []
    for ref in reference_rows:
        key = _normalise(ref["instruction"])
        candidates = by_instruction.get(key, [])
        if used[key] < len(candidates):
            pairs.append((ref, candidates[used[key]]))
            used[key] += 1
        else:
            missing.append(ref["instruction"])
    extra = [k for k, rows in by_instruction.items() if used[k] < len(rows)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} instruction(s) of {reference_path} are missing, e.g. {missing[0][:80]!r}")
        if extra:
            parts.append(f"{len(extra)} instruction(s) are not in the reference, e.g. {extra[0][:80]!r}")
        raise ArtifactError(f"{model_path}: does not match reference {reference_path}: " + "; ".join(parts))
    return pairs
