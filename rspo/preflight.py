"""Checks of the workflow config before any job runs: one line naming the culprit, exit status 1.

``workflow/rules/common.smk`` runs these while Snakemake reads the workflow, so a bad config costs
seconds (not a failed job after hours of generation), whether or not results already exist:

* :func:`validate_config`: the JSON schema ``workflow/schemas/config.schema.yaml`` through
  Snakemake's validator (which also fills in the defaults); its first error becomes one line that
  names the key, e.g. ``generation.sampling.n: 1 is less than the minimum of 2 (...)``;
* :func:`check_config`: what the schema cannot express: relations between keys, local paths that
  must exist (models, prompt files, the evaluation reference, ``df_gamed``), hub ids that cannot be
  loaded while ``HF_HUB_OFFLINE=1``, and API keys written into the config (they are read from the
  environment only);
* :func:`exit_on_config_error`: prints such an error as ``rspo: config error: ...`` on stderr and
  exits with status 1; a raised exception would make Snakemake print Python frames under it.

A hub id that is not in the local cache while offline is an error for a run and a warning for a
dry run (``snakemake -n`` plans a cluster run on a login node without the hub).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rspo.config import ConfigError, PromptSource, RSPOConfig, from_dict
from rspo.errors import RSPOError

#: ``judge.model`` of the pairrm judge when it is null (rspo.preference.pairrm.DEFAULT_MODEL; a test pins it)
PAIRRM_DEFAULT_MODEL = "llm-blender/PairRM"
#: where API keys come from (rspo.preference.llm, rspo.evaluation.alpaca_judges)
KEY_VARIABLES = "RSPO_JUDGE_API_KEY, OPENAI_API_KEY"
#: config key names that hold a secret: these words, or ending in _<word> (``hf_token``, ``openai_api_key``)
_SECRET_WORDS = ("key", "api_key", "apikey", "token", "access_token", "secret", "password")


# --------------------------------------------------------------------------- reporting


@contextlib.contextmanager
def exit_on_config_error(stream=None) -> Iterator[None]:
    """Turn a :class:`ConfigError` / :class:`RSPOError` of the block into ONE line on stderr and exit 1."""
    try:
        yield
    except (ConfigError, RSPOError) as exc:
        print(f"rspo: config error: {exc}", file=stream or sys.stderr)
        sys.exit(1)


def is_dry_run(argv: Iterable[str]) -> bool:
    """Whether a Snakemake command line asks for a dry run (``-n``, ``--dry-run``, ``-np``, ...)."""
    return any(a in ("--dry-run", "--dryrun") or re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", a) for a in argv)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(path: Iterable[Any]) -> str:
    """``['prompts', 0, 'path']`` -> ``prompts[0].path``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_error_line(error) -> str:
    """One line for a ``jsonschema.ValidationError``: the key, the problem, the key's description."""
    key = _key(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    description = " ".join(str(schema.get("description", "")).split())
    if error.validator in ("oneOf", "anyOf"):  # name the alternatives' keys that are set, not the whole value
        keys = [k for alt in schema.get(error.validator, []) for k in alt.get("required", [])]
        given = [k for k in keys if isinstance(error.instance, dict) and error.instance.get(k) is not None]
        message = f"sets {' and '.join(given)}" if given else f"sets none of {', '.join(keys)}"
    else:
        message = " ".join(error.message.split())
        if len(message) > 300:
            message = message[:297] + "..."
    if not key:  # a top-level error: the schema's own description would be noise
        return message
    return f"{key}: {message} ({description})" if description else f"{key}: {message}"


def validate_config(config: dict, schema_path: str | Path) -> None:
    """Validate ``config`` against the schema and fill in its defaults (Snakemake's validator);
    the first error is raised as a one-line :class:`ConfigError` naming the key."""
    from snakemake.utils import validate

    try:
        validate(config, str(Path(schema_path).resolve()))
    except Exception as exc:
        import jsonschema

        cause = exc if isinstance(exc, jsonschema.ValidationError) else exc.__context__
        if isinstance(cause, jsonschema.ValidationError):
            raise ConfigError(schema_error_line(cause)) from None
        raise ConfigError(" ".join(str(exc).split())) from None


# --------------------------------------------------------------------------- checks


def check_config(config: Mapping[str, Any], *, prepared: Iterable[str] = (), dry_run: bool = False) -> list[str]:
    """Raise :class:`ConfigError` (one line naming the key) for what the schema cannot check.

    ``config`` is the validated workflow config (defaults filled in); relative paths are relative
    to the working directory. ``prepared`` lists paths that workflow rules produce (the embedded
    policy folder): they need not exist yet. Returns warnings (hub ids offline in a dry run).
    """
    cfg: RSPOConfig = from_dict(RSPOConfig, dict(config), "config")
    check_relations(cfg)
    check_no_secrets(config)
    prepared = {str(Path(p)) for p in prepared}
    problems = [_model_problem(key, ref) for key, ref in model_references(cfg) if str(Path(ref)) not in prepared]
    sources = [(f"prompts[{i}]", s) for i, s in enumerate(cfg.prompts[: cfg.iterations])]
    sources.append(("evaluation.prompts", cfg.evaluation.prompts))
    problems += [_source_problem(key, source) for key, source in sources]
    warnings = []
    for problem in problems:
        if problem is None:
            continue
        hub, message = problem
        if not (hub and dry_run):
            raise ConfigError(message)
        warnings.append(f"{message} (a run would stop here)")
    if cfg.evaluation.reference != "pi0":
        _require_file("evaluation.reference", cfg.evaluation.reference,
                      "pi0, or a local alpaca_eval-format JSON of reference outputs")
    if cfg.evaluation.df_gamed is not None:
        _require_file("evaluation.df_gamed", cfg.evaluation.df_gamed, "alpaca_eval's df_gamed.csv, or null")
    return warnings


def check_relations(cfg: RSPOConfig) -> None:
    """Relations between keys that the JSON schema cannot express."""
    t = cfg.train
    if not t.max_prompt_length < t.max_length:
        raise ConfigError(
            f"train.max_prompt_length = {t.max_prompt_length} must be less than train.max_length = {t.max_length} "
            "(the prompt keeps at most max_prompt_length tokens of the max_length; responses need the rest)"
        )
    if len(cfg.prompts) < cfg.iterations and not cfg.cycle_prompts:
        raise ConfigError(
            f"prompts: lists {len(cfg.prompts)} prompt set(s) but iterations = {cfg.iterations}: "
            "give one prompt set per iteration, or set cycle_prompts: true"
        )
    for key, judge in (("judge", cfg.judge), ("evaluation.annotator", cfg.evaluation.annotator)):
        if judge.name in ("reward_model", "llm", "alpaca_eval_vllm") and not judge.model:
            raise ConfigError(f"{key}.model: the {judge.name} judge needs a model (its name or folder), got null")


def check_no_secrets(config: Mapping[str, Any], where: str = "") -> None:
    """API keys, tokens and passwords belong in the environment, never in the config (it reaches
    the shell commands Snakemake prints, its metadata and the logs)."""
    for name, value in config.items():
        key = f"{where}.{name}" if where else str(name)
        lowered = str(name).lower()
        secret = lowered in _SECRET_WORDS or any(lowered.endswith(f"_{w}") for w in _SECRET_WORDS)
        if secret and isinstance(value, str) and value:  # a mapping named so (e.g. a regularizer) is no secret
            raise ConfigError(
                f"{key}: secrets are read from the environment only ({KEY_VARIABLES}, or the variable named "
                "by options.api_key_env); remove it from the config"
            )
        if isinstance(value, Mapping):
            check_no_secrets(value, key)


def model_references(cfg: RSPOConfig) -> list[tuple[str, str]]:
    """``(config key, reference)`` of every model a job loads from a local folder or the hub."""
    refs = [("policy", cfg.policy)]
    if cfg.reference:
        refs.append(("reference", cfg.reference))
    for key, judge in (("judge", cfg.judge), ("evaluation.annotator", cfg.evaluation.annotator)):
        if judge.name == "pairrm":
            refs.append((f"{key}.model", judge.model or PAIRRM_DEFAULT_MODEL))
        elif judge.name in ("embedded", "reward_model") and judge.model:
            refs.append((f"{key}.model", judge.model))
        elif judge.name == "llm" and judge.options.get("backend") == "vllm" and judge.model:
            refs.append((f"{key}.model", judge.model))
        # llm (openai backend) and alpaca_eval_*: `model` is a name at an HTTP endpoint, not a file
    return refs


def _model_problem(key: str, ref: str) -> tuple[bool, str] | None:
    """None if ``ref`` can be loaded here; else (is a hub problem, one line naming ``key``)."""
    from rspo.models import hub_offline, in_hub_cache, looks_like_path

    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            return False, f"{key}: {ref!r} is a file; expected a model folder"
        if key in ("policy", "reference") and not (path / "config.json").is_file():
            return False, f"{key}: {ref!r} has no config.json: not a Hugging Face model folder"
        return None
    if looks_like_path(ref):
        return False, f"{key}: {ref!r}: no such local folder (a hub id looks like org/name)"
    if hub_offline() and not in_hub_cache(ref):
        return True, (
            f"{key}: {ref!r} is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and it is not in the local cache; "
            f"download it where the hub is reachable (huggingface-cli download {ref}) or set {key} to a local folder"
        )
    return None


def _source_problem(key: str, source: PromptSource) -> tuple[bool, str] | None:
    """None if the prompt source can be read here; else (is a hub problem, one line naming ``key``)."""
    from rspo.models import hub_offline, in_hub_cache
    from rspo.prompts import FILE_TYPES, embedded_splits

    if source.embedded:
        splits = embedded_splits()
        if source.embedded not in splits:
            return False, f"{key}.embedded: no split {source.embedded!r} in the embedded prompt set; splits: {', '.join(splits)}"
    elif source.path:
        try:
            _require_file(f"{key}.path", source.path, "a local JSON, JSONL or Parquet file of prompts")
        except ConfigError as exc:
            return False, str(exc)
        suffix = Path(source.path).suffix.lower()
        if suffix not in FILE_TYPES:
            return False, f"{key}.path: {source.path!r} has unsupported type {suffix!r} (use {', '.join(FILE_TYPES)})"
    elif source.dataset and not Path(source.dataset).expanduser().exists():
        if hub_offline() and not in_hub_cache(source.dataset, repo_type="dataset"):
            return True, (
                f"{key}.dataset: {source.dataset!r} is a Hugging Face dataset id, but HF_HUB_OFFLINE=1 and it "
                f"is not in the local cache; download it where the hub is reachable or give a local file as {key}.path"
            )
    return None


def _require_file(key: str, value: str, what: str) -> None:
    import os

    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}: {value!r}: no such file ({what})")
    if not path.is_file():
        raise ConfigError(f"{key}: {value!r} is not a file ({what})")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {value!r} is not readable (permission denied)")
