"""Artefacts every step reads and writes: documented schemas, validated reads, atomic writes.

Every table is JSONL. Its first line is a header ``{"rspo_schema": KIND, "version": N}``; each
further line is one row. :data:`SCHEMAS` lists the required fields (and their JSON types) of each
kind; ``docs/artefacts.md`` documents them. Readers check the header and every row and name the
file, the line and the field on error. Writers write to a temporary name in the same folder and
rename it into place, so a killed step never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """An input file is missing, malformed, or lacks a required field."""


@dataclass(frozen=True)
class Schema:
    kind: str
    version: int
    fields: dict[str, type | tuple[type, ...]]  # required fields and their JSON types


_NUM = (int, float)

SCHEMAS: dict[str, Schema] = {
    s.kind: s
    for s in [
        # prompts of one iteration or of the evaluation set
        Schema("prompts", 1, {"prompt_id": str, "prompt": str}),
        # K sampled responses per prompt (rspo generate)
        Schema(
            "responses",
            1,
            {
                "prompt_id": str,
                "prompt": str,
                "responses": list,  # K strings
                "num_tokens": list,  # K ints (generated tokens)
                "finish_reasons": list,  # K of "stop" | "length"
                "generator": str,  # model path or id
                "sampling": dict,  # temperature, top_p, max_new_tokens, seed, n, backend
            },
        ),
        # K x K preference logits per prompt (rspo score); logits[i][j] = logit(i beats j)
        Schema("preferences", 1, {"prompt_id": str, "judge": str, "logits": list}),
        # one chosen/rejected pair per prompt (rspo pairs); logps fields added by rspo logps
        Schema(
            "pairs",
            1,
            {
                "prompt_id": str,
                "prompt": str,
                "chosen": str,
                "rejected": str,
                "chosen_index": int,
                "rejected_index": int,
                "p_chosen": _NUM,
                "p_rejected": _NUM,
                "scores": list,
            },
        ),
        Schema(
            "pairs_logps",
            1,
            {
                "prompt_id": str,
                "prompt": str,
                "chosen": str,
                "rejected": str,
                "p_chosen": _NUM,
                "p_rejected": _NUM,
                "last_logp_chosen": _NUM,  # log pi_t(y_w | x), a SUM over response tokens
                "last_logp_rejected": _NUM,
                "ref_logp_chosen": _NUM,  # log mu(y_w | x)
                "ref_logp_rejected": _NUM,
                "chosen_tokens": int,
                "rejected_tokens": int,
            },
        ),
        # one shard of rspo logps (--shard i/N): one row per scored sequence; rspo merge joins the parts
        Schema(
            "pairs_logps_part",
            1,
            {
                "prompt_id": str,
                "model": str,  # "last" (pi_t) | "ref" (mu)
                "response": str,  # "chosen" | "rejected"
                "logp": _NUM,  # log model(response | prompt), a SUM over response tokens
                "tokens": int,  # response tokens scored (that model's tokenizer)
            },
        ),
        # per optimizer step (rspo train)
        Schema("train_log", 1, {"step": int, "loss": _NUM, "lr": _NUM}),
    ]
}


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- tables


def _check_row(row: Any, schema: Schema, where: str) -> None:
    if not isinstance(row, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, tp in schema.fields.items():
        if name not in row:
            raise ArtifactError(f"{where}: missing field {name!r} (schema {schema.kind} v{schema.version})")
        value = row[name]
        if not isinstance(value, tp) or (tp in (int, _NUM) and isinstance(value, bool)):
            raise ArtifactError(f"{where}: field {name!r} has type {type(value).__name__}, expected {tp}")


def write_table(path: str | Path, rows: Iterable[dict[str, Any]], kind: str) -> int:
    """Validate and write ``rows`` as a JSONL table of ``kind``, atomically. Returns the row count."""
    schema = SCHEMAS[kind]
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"rspo_schema": kind, "version": schema.version}) + "\n")
        for row in rows:
            n += 1
            _check_row(row, schema, f"{path}: row {n}")
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{path}: line {lineno}: not valid JSON ({exc})") from None


def read_json_objects(path: str | Path, what: str) -> list[dict[str, Any]]:
    """A JSON file holding a non-empty list of objects (alpaca_eval outputs / annotations)."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise ArtifactError(f"{path}: expected a non-empty JSON list of {what} objects")
    for n, row in enumerate(data):
        if not isinstance(row, dict):
            raise ArtifactError(f"{path}: item {n} is a {type(row).__name__}, expected an object")
    return data


def read_table(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """Read a JSONL table written by :func:`write_table`, validating header and rows."""
    path = Path(path)
    schema = SCHEMAS[kind]
    if not path.exists():
        raise ArtifactError(f"{path}: file not found (expected a {kind} table)")
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(path):
        if lineno == 1:
            if not isinstance(obj, dict) or obj.get("rspo_schema") != kind:
                raise ArtifactError(
                    f"{path}: line 1: expected header {{'rspo_schema': '{kind}', 'version': {schema.version}}}"
                    f", got {str(obj)[:120]}"
                )
            if obj.get("version") != schema.version:
                raise ArtifactError(
                    f"{path}: schema {kind} version {obj.get('version')} is not supported "
                    f"(this rspo reads version {schema.version})"
                )
            continue
        _check_row(obj, schema, f"{path}: line {lineno}")
        rows.append(obj)
    if not rows and path.stat().st_size == 0:
        raise ArtifactError(f"{path}: empty file (expected a {kind} table)")
    return rows


# --------------------------------------------------------------------------- provenance


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str | None:
    """The commit of the rspo checkout, when it is one (None for an installed wheel)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(config: Any, inputs: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Provenance written beside every model and metric: resolved config, version, commit, input hashes."""
    import dataclasses

    from rspo import __version__

    hashes = {}
    for name, p in (inputs or {}).items():
        p = Path(p)
        hashes[name] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {"rspo_version": __version__, "git_commit": git_commit(), "config": cfg, "inputs": hashes}
