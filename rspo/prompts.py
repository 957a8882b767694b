"""Prompt sets: the embedded set, a local file, or a Hugging Face dataset -> ``prompts`` rows.

:func:`load_prompts` reads exactly one source of a :class:`~rspo.config.PromptSource`:

- ``embedded``: the rows of ``rspo/data/prompts.jsonl`` (fields ``prompt_id``, ``prompt``,
  ``category``, ``split``) whose ``split`` is the given name (``train1``, ``train2``, ``train3``,
  ``eval``); their ids and categories are kept;
- ``path``: a JSON list (of objects, or of strings), JSONL, or Parquet file; the prompt is field
  ``column``; the id is field ``id_column`` when given, else ``f"{file stem}-{row index}"``;
- ``dataset``: a Hugging Face dataset id (or a local dataset folder) loaded with
  ``datasets.load_dataset(dataset, split=split)``; ids as for a file with the last part of the
  id as stem, e.g. the paper's ``UCLA-AGI/data-mistral-7b-instruct-sppo-iter1`` (column ``prompt``)
  gives ``data-mistral-7b-instruct-sppo-iter1-0``, ...

A prompt may also be a chat (a list of ``{"role", "content"}`` messages): its first user message is
taken. Then ``offset``/``limit`` take a slice; generated ids count rows of the whole source, so a
slice keeps the ids it would have unsliced. Every kept prompt must be a non-empty string and every
id unique, otherwise :class:`~rspo.errors.RSPOError` names the source and the row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rspo.config import ConfigError, PromptSource
from rspo.errors import HubUnavailableError, RSPOError

EMBEDDED_PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.jsonl"


def load_prompts(source: PromptSource, embedded_file: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows ``{"prompt_id", "prompt"}`` (plus ``category`` for the embedded set) of one source.

    ``embedded_file`` replaces ``rspo/data/prompts.jsonl`` (for tests)."""
    chosen = [name for name in ("embedded", "path", "dataset") if getattr(source, name)]
    if len(chosen) != 1:
        raise ConfigError(
            f"a prompt source needs exactly one of embedded, path, dataset; got {chosen or 'none'}"
        )
    if source.offset < 0 or (source.limit is not None and source.limit < 0):
        raise ConfigError(f"prompt source: offset ({source.offset}) and limit ({source.limit}) must be >= 0")
    if source.embedded:
        where, rows = _embedded(source.embedded, Path(embedded_file or EMBEDDED_PROMPTS))
    elif source.path:
        where, rows = _from_file(Path(source.path).expanduser(), source)
    else:
        where, rows = _from_dataset(source)
    stop = None if source.limit is None else source.offset + source.limit
    rows = rows[source.offset : stop]
    _validate(rows, where)
    return rows


# --------------------------------------------------------------------------- sources


def _embedded(split: str, path: Path) -> tuple[str, list[dict[str, Any]]]:
    where = f"{path} (split {split!r})"
    records = _read_jsonl(path)
    splits = sorted({str(r.get("split")) for r in records})
    rows = []
    for i, r in enumerate(records):
        if r.get("split") != split:
            continue
        if "prompt_id" not in r or "prompt" not in r:
            raise RSPOError(f"{path}: line {i + 1}: needs fields prompt_id and prompt")
        row = {"prompt_id": str(r["prompt_id"]), "prompt": r["prompt"]}
        if "category" in r:
            row["category"] = r["category"]
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no prompts in split {split!r}; splits: {', '.join(splits)}")
    return where, rows


def _from_file(path: Path, source: PromptSource) -> tuple[str, list[dict[str, Any]]]:
    if not path.is_file():
        raise RSPOError(f"prompt file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        records = pd.read_parquet(path).to_dict(orient="records")
    elif suffix == ".jsonl":
        records = _read_jsonl(path)
    elif suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RSPOError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(records, list):
            raise RSPOError(f"{path}: expected a JSON list of prompts, got {type(records).__name__}")
    else:
        raise RSPOError(f"prompt file {path}: unsupported type {suffix!r} (use .json, .jsonl or .parquet)")
    return str(path), _to_rows(records, source, path.stem, str(path))


def _from_dataset(source: PromptSource) -> tuple[str, list[dict[str, Any]]]:
    from rspo.models import hub_offline

    where = f"dataset {source.dataset!r} (split {source.split!r})"
    local = Path(source.dataset).expanduser()
    try:
        import datasets

        ds = datasets.load_dataset(str(local) if local.exists() else source.dataset, split=source.split)
    except Exception as exc:  # datasets raises many types for a missing / unreachable dataset
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if hub_offline() and not local.exists():
            raise HubUnavailableError(
                f"{where} is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and it is not in the local cache "
                f"({first}). Download it where the hub is reachable, or give a local file with `path` instead."
            ) from None
        raise RSPOError(f"{where} could not be loaded: {first}") from None
    if source.column not in ds.column_names:
        raise RSPOError(f"{where}: no column {source.column!r}; columns: {', '.join(ds.column_names)}")
    stem = source.dataset.rstrip("/").split("/")[-1]
    return where, _to_rows(list(ds), source, stem, where)


# --------------------------------------------------------------------------- helpers


def _read_jsonl(path: Path) -> list[Any]:
    from rspo.artifacts import ArtifactError, iter_jsonl

    if not path.is_file():
        raise RSPOError(f"prompt file {path}: not found")
    try:
        # skip the header of an rspo table (e.g. a prompts table read back)
        return [obj for n, obj in iter_jsonl(path) if not (n == 1 and isinstance(obj, dict) and "rspo_schema" in obj)]
    except ArtifactError as exc:
        raise RSPOError(str(exc)) from None


def _prompt_text(value: Any) -> Any:
    """A prompt string, or the first user message of a chat (list of role/content messages)."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        for message in value:
            if message.get("role", "user") == "user":
                return message["content"]
    return value


def _to_rows(records: list[Any], source: PromptSource, stem: str, where: str) -> list[dict[str, Any]]:
    rows = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            if source.id_column:
                raise RSPOError(f"{where}: row {i}: a bare string has no id column {source.id_column!r}")
            rows.append({"prompt_id": f"{stem}-{i}", "prompt": rec})
            continue
        if not isinstance(rec, dict):
            raise RSPOError(f"{where}: row {i}: expected an object or a string, got {type(rec).__name__}")
        if source.column not in rec:
            raise RSPOError(f"{where}: row {i}: no field {source.column!r}; fields: {', '.join(map(str, rec))}")
        if source.id_column:
            if rec.get(source.id_column) is None:
                raise RSPOError(f"{where}: row {i}: no id field {source.id_column!r}")
            pid = str(rec[source.id_column])
        else:
            pid = f"{stem}-{i}"
        rows.append({"prompt_id": pid, "prompt": _prompt_text(rec[source.column])})
    return rows


def _validate(rows: list[dict[str, Any]], where: str) -> None:
    if not rows:
        raise RSPOError(f"{where}: no prompts selected")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise RSPOError(f"{where}: prompt {row['prompt_id']!r}: expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise RSPOError(f"{where}: prompt {row['prompt_id']!r} is empty")
        if row["prompt_id"] in seen:
            raise RSPOError(
                f"{where}: duplicate prompt id {row['prompt_id']!r} (selected rows {seen[row['prompt_id']]} and {i})"
            )
        seen[row["prompt_id"]] = i
