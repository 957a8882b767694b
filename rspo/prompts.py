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
id unique, otherwise :class:`~rspo.errors.RSPOError` names the source and the row (the line of a
JSONL file). An unreadable file, a malformed line, an empty selection and duplicate ids are errors
in one line naming the file.

Prompts longer than the prompt budget are NOT rejected here (the budget is in tokens of the
policy's tokenizer, which this step does not load): they are truncated per config, keeping their
END as the authors' trainer does, and counted in the log of the step that truncates them
(:func:`rspo.chat.count_over_budget`): ``rspo generate`` with ``generation.max_prompt_length``
(null = never truncated), ``rspo logps`` with ``train.max_prompt_length``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rspo.config import ConfigError, PromptSource
from rspo.errors import HubUnavailableError, RSPOError

EMBEDDED_PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.jsonl"
FILE_TYPES = (".json", ".jsonl", ".parquet")  # the prompt files `path` may name


def embedded_splits(path: str | Path = EMBEDDED_PROMPTS) -> list[str]:
    """The split names of the embedded prompt set (``eval``, ``train1``, ...)."""
    return sorted({str(obj.get("split")) for _, obj in _read_jsonl(Path(path)) if isinstance(obj, dict)})


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
    total = len(rows)
    stop = None if source.limit is None else source.offset + source.limit
    rows = rows[source.offset : stop]
    if not rows:
        what = "has no prompts" if total == 0 else (
            f"has {total} prompts; offset {source.offset} and limit {source.limit} select none")
        raise RSPOError(f"{where}: no prompts selected: the source {what}")
    _validate(rows, where)
    return [{k: v for k, v in row.items() if k != "_where"} for row in rows]


# --------------------------------------------------------------------------- sources


def _embedded(split: str, path: Path) -> tuple[str, list[dict[str, Any]]]:
    where = f"{path} (split {split!r})"
    records = _read_jsonl(path)
    splits = sorted({str(r.get("split")) for _, r in records if isinstance(r, dict)})
    rows = []
    for lineno, r in records:
        if not isinstance(r, dict) or r.get("split") != split:
            continue
        if "prompt_id" not in r or "prompt" not in r:
            raise RSPOError(f"{path}: line {lineno}: needs fields prompt_id and prompt")
        row = {"prompt_id": str(r["prompt_id"]), "prompt": r["prompt"], "_where": f"line {lineno}"}
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
    if suffix not in FILE_TYPES:
        raise RSPOError(f"prompt file {path}: unsupported type {suffix!r} (use .json, .jsonl or .parquet)")
    if suffix == ".jsonl":
        return str(path), _to_rows(_read_jsonl(path), source, path.stem, str(path))
    try:
        if suffix == ".parquet":
            import pandas as pd

            try:
                records = pd.read_parquet(path).to_dict(orient="records")
            except OSError:
                raise
            except Exception as exc:  # pyarrow raises its own types for a corrupt file
                raise RSPOError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
        else:
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RSPOError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(records, list):
                raise RSPOError(f"{path}: expected a JSON list of prompts, got {type(records).__name__}")
    except UnicodeDecodeError as exc:
        raise RSPOError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RSPOError(f"prompt file {path}: cannot be read ({exc.strerror or exc})") from None
    return str(path), _to_rows(list(enumerate(records)), source, path.stem, str(path), label="row")


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
    return where, _to_rows(list(enumerate(ds)), source, stem, where, label="row")


# --------------------------------------------------------------------------- helpers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, object)`` of every non-blank line; an rspo table's header line is skipped."""
    from rspo.artifacts import ArtifactError, iter_jsonl

    if not path.is_file():
        raise RSPOError(f"prompt file {path}: not found")
    try:
        # skip the header of an rspo table (e.g. a prompts table read back)
        return [(n, obj) for n, obj in iter_jsonl(path) if not (n == 1 and isinstance(obj, dict) and "rspo_schema" in obj)]
    except ArtifactError as exc:  # names the file and the line (also of a line that is not UTF-8)
        raise RSPOError(str(exc)) from None
    except OSError as exc:
        raise RSPOError(f"prompt file {path}: cannot be read ({exc.strerror or exc})") from None


def _prompt_text(value: Any) -> Any:
    """A prompt string, or the first user message of a chat (list of role/content messages)."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        for message in value:
            if message.get("role", "user") == "user":
                return message["content"]
    return value


def _to_rows(
    records: list[tuple[int, Any]], source: PromptSource, stem: str, where: str, label: str = "line"
) -> list[dict[str, Any]]:
    """Prompt rows of ``(position, record)`` pairs; ``label`` names a position in errors (line, row).

    Generated ids count records: ``f"{stem}-{i}"`` for the i-th record (0-based)."""
    rows = []
    for i, (pos, rec) in enumerate(records):
        at = f"{label} {pos}"
        if isinstance(rec, str):
            if source.id_column:
                raise RSPOError(f"{where}: {at}: a bare string has no id column {source.id_column!r}")
            rows.append({"prompt_id": f"{stem}-{i}", "prompt": rec, "_where": at})
            continue
        if not isinstance(rec, dict):
            raise RSPOError(f"{where}: {at}: expected an object or a string, got {type(rec).__name__}")
        if source.column not in rec:
            raise RSPOError(f"{where}: {at}: no field {source.column!r}; fields: {', '.join(map(str, rec))}")
        if source.id_column:
            if rec.get(source.id_column) is None:
                raise RSPOError(f"{where}: {at}: no id field {source.id_column!r}")
            pid = str(rec[source.id_column])
        else:
            pid = f"{stem}-{i}"
        rows.append({"prompt_id": pid, "prompt": _prompt_text(rec[source.column]), "_where": at})
    return rows


def _validate(rows: list[dict[str, Any]], where: str) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        prompt, pid, at = row["prompt"], row["prompt_id"], row["_where"]
        if not isinstance(prompt, str):
            raise RSPOError(f"{where}: prompt {pid!r}: expected a string, got {type(prompt).__name__} ({at})")
        if not prompt.strip():
            raise RSPOError(f"{where}: prompt {pid!r} is empty ({at})")
        if pid in seen:
            raise RSPOError(f"{where}: duplicate prompt id {pid!r} ({seen[pid]} and {at})")
        seen[pid] = at
