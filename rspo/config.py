"""One config system: a validated YAML mapping -> typed dataclasses.

The workflow validates ``config/config.yaml`` against ``workflow/schemas/config.schema.yaml``
(JSON Schema) and every ``python -m rspo <step>`` receives the section it needs as JSON through
``--params``; the step turns it into the dataclass below with :func:`from_dict`, which rejects
unknown keys and wrong types with a message that names the key.

The top-level :class:`RSPOConfig` mirrors the YAML file exactly; :func:`load_config` reads a YAML
file (plus ``key=value`` overrides) into it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# --------------------------------------------------------------------------- sections


@dataclass
class PromptSource:
    """Where a prompt set comes from: exactly one of ``embedded``, ``path`` or ``dataset``.

    - ``embedded``: a split of the prompt set shipped in ``rspo/data/prompts.jsonl``
      (``train1``, ``train2``, ``train3``, ... or ``eval``);
    - ``path``: a local JSON / JSONL / Parquet file;
    - ``dataset``: a Hugging Face dataset id (needs the hub), with ``split``.
    ``column`` names the prompt field; ``limit``/``offset`` take a slice (after ``offset``).
    """

    embedded: str | None = None
    path: str | None = None
    dataset: str | None = None
    split: str = "train"
    column: str = "prompt"
    id_column: str | None = None
    limit: int | None = None
    offset: int = 0


@dataclass
class SamplingConfig:
    """Sampling parameters shared by both generation backends."""

    n: int = 5  # K responses per prompt
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 2048
    seed: int = 0
    # "per_sample": sample k of prompt x has its own stream (transformers) / one request with n=K (vllm);
    # "passes": the authors' generate.py, K passes over all prompts, pass p seeded with seed + 50 p
    seeding: str = "per_sample"


@dataclass
class GenerateConfig:
    backend: str = "transformers"  # "transformers" (CPU/GPU) or "vllm" (GPU)
    batch_size: int = 8  # prompts per forward batch (transformers backend)
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_prompt_length: int | None = None  # prompt tokens kept (from the end)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class JudgeConfig:
    """The preference oracle: ``embedded`` (default, CPU), ``pairrm``, ``reward_model`` or ``llm``."""

    name: str = "embedded"
    model: str | None = None  # local path or hub id (pairrm / reward_model / llm)
    batch_size: int = 8
    beta: float = 5.0  # scale of score differences -> logits (embedded judge)
    cache_dir: str | None = None  # on-disk cache of pair judgements
    options: dict[str, Any] = field(default_factory=dict)  # judge-specific extras
    # what the judge reads as the prompt: "raw" (the instruction) or "chat" (the policy's chat-formatted
    # prompt string, as the authors' rank.py gives PairRM); `rspo score` only
    prompt_form: str = "raw"


@dataclass
class TrainConfig:
    eta: float = 1000.0  # SPPO step size (= 1/beta in the authors' code)
    regularizer: Any = "none"  # preset name or mapping {term: lambda}
    is_clip: float = 10.0  # clip of the log importance weight (IS forward KL, chi2)
    optimizer: str = "rmsprop"  # rmsprop (paper) | adamw
    learning_rate: float = 5e-7
    lr_scheduler: str = "linear"  # linear | constant | cosine (all with warm-up)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_epochs: float = 1.0
    max_length: int = 1024
    max_prompt_length: int = 512
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU | fp32 | bf16
    gradient_checkpointing: bool = False
    # gradient-norm clipping; None = none. The authors' runs did not clip: HF Trainer's max_grad_norm=1.0
    # is a no-op under their DeepSpeed config, which sets no gradient_clipping (docs/implementation-details.md)
    max_grad_norm: float | None = 1.0
    seed: int = 42
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints (0 = only at the end)
    logps_batch_size: int = 8  # batch size of the log-prob cache step
    logps_chunk_size: int = 256  # response tokens per log-softmax chunk (logps step and training); 0 = unchunked
    save_dtype: str = "fp32"  # dtype of the saved iterate: fp32 | bf16 (the authors: DeepSpeed's 16-bit save)
    num_processes: int = 1  # training processes (GPUs); > 1 runs `accelerate launch` (rspo.launch)
    accelerate_config: str | None = None  # accelerate config file (config/accelerate/*.yaml); null = none


@dataclass
class SelfBleuConfig:
    enabled: bool = False
    n: int = 16
    num_instructions: int | None = None  # None = all evaluation instructions
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 200
    seed: int = 2024


@dataclass
class EvalConfig:
    """Evaluation of every iterate pi_0..pi_T."""

    prompts: PromptSource = field(default_factory=lambda: PromptSource(embedded="eval"))
    # "pi0": compare against pi_0's outputs on the same prompts (embedded default);
    # a path: an alpaca_eval-format JSON of reference outputs (e.g. GPT-4-turbo's)
    reference: str = "pi0"
    annotator: JudgeConfig = field(default_factory=JudgeConfig)
    generation: GenerateConfig = field(
        default_factory=lambda: GenerateConfig(sampling=SamplingConfig(n=1, max_new_tokens=2048))
    )
    df_gamed: str | None = None  # path to alpaca_eval's df_gamed.csv for the official LC
    self_bleu: SelfBleuConfig = field(default_factory=SelfBleuConfig)
    seed: int = 0  # output-order randomisation of pairwise annotation


@dataclass
class ShardsConfig:
    """Independent jobs per step (rspo.sharding): 1 = one job; N > 1 = N ``--shard i/N`` jobs
    merged by ``rspo merge`` into a file byte-identical to the one-job file."""

    generate: int = 1  # generate and generate_ref (each iteration's K responses)
    score: int = 1
    logps: int = 1
    eval_generate: int = 1  # eval_generate and selfbleu_generate


@dataclass
class RSPOConfig:
    """The whole workflow configuration (``config/config.yaml``)."""

    reg: str = "mixed"
    regularizers: dict[str, dict[str, float]] = field(default_factory=dict)
    iterations: int = 3
    policy: str = "resources/models/smollm2-135m-instruct"  # folder, hub id, or HUB_ID@REVISION (pinned)
    reference: str | None = None  # mu; None = the policy
    prompts: list[PromptSource] = field(default_factory=lambda: [PromptSource(embedded="train1")])
    cycle_prompts: bool = False  # iteration t uses prompts[(t-1) mod len]; False = one set per iteration
    generation: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_python: str = "python"  # interpreter of the rules that request a GPU (the GPU job venv)
    cpu_isa: str = "native"  # CPU kernels' instruction set: native (fastest) or avx2 (same bytes on x86-64 machines)


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (dataclasses, Optional, list, dict)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any] | None, where: str | None = None):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    where = where or cls.__name__
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able mapping."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def parse_params(text: str | None, cls: type):
    """``--params`` of a CLI step: a JSON object, or ``@file`` holding YAML/JSON; None = defaults."""
    if not text:
        return cls()
    if text.startswith("@"):
        import yaml

        path = Path(text[1:])
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--params {text}: cannot be read ({exc.strerror or exc})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--params {text}: not valid YAML/JSON ({' '.join(str(exc).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--params is not valid JSON ({exc}): {text[:200]!r}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"--params must be a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    return from_dict(cls, data)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> RSPOConfig:
    """Read ``config.yaml`` (plus ``a.b=value`` overrides, values parsed as YAML)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(data, key, yaml.safe_load(raw))
    return from_dict(RSPOConfig, data, "config")
