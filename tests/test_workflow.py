"""The Snakemake workflow: dry runs for every `reg`, config validation, lint/format, the SLURM
profile, and an end-to-end run on tiny random models (no-op rerun, one-hyperparameter rerun,
report).

Snakemake runs as a subprocess (`python -m snakemake`) from the repository root with
`--directory` a temporary folder, so no test reads or writes the repository's results/ or
.snakemake/. Expected job counts are worked out by hand from docs/pipeline.md's layout:
iteration 1 is sampled from pi_0 once (results/base/), iterations 2..T per regularizer; every
regularizer trains T iterates; pi_0 is evaluated once and each pi_t (t >= 1) per regularizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "workflow_config_tiny.yaml"
PRESETS = ["none", "reverse_kl", "forward_kl", "is_forward_kl", "chi2", "mixed"]


def smk(workdir: Path, *args: str, timeout: int = 600) -> tuple[int, str]:
    """Run snakemake from the repository root on `workdir`; returns (exit code, stdout + stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # rule shells call `python -m rspo`: the interpreter running the tests must come first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def job_counts(out: str) -> dict[str, int]:
    """The "Job stats" table of a dry run as {rule: count} (without the total)."""
    match = re.search(r"^Job stats:\n(.*?)\n\s*\n", out, re.M | re.S)
    assert match, out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", match.group(1), re.M))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def shell_commands(out: str, rule: str) -> list[str]:
    """Shell commands of every planned job of `rule` (dry run with -p)."""
    blocks = re.findall(rf"^rule {rule}:\n(.*?)(?=^\[|\Z)", out, re.M | re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("Shell command: ")]


def make_workdir(path: Path, config: dict | None = None) -> Path:
    """A run folder whose config/config.yaml is the repository's default (or `config`)."""
    (path / "config").mkdir(parents=True, exist_ok=True)
    if config is None:
        shutil.copy(ROOT / "config" / "config.yaml", path / "config" / "config.yaml")
    else:
        (path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- dry runs

# Every dry run below is planned once, two at a time, by the module fixture `dry`; each test then
# reads its own. (key -> (snakemake arguments, extra files written into the run folder))
CUSTOM = "regularizers:\n  myreg: {is_forward_kl: 0.05, chi2: 0.2}\n  withfkl: {forward_kl: 0.3}\n"
PAPER = str(ROOT / "config" / "paper-mistral7b.yaml")
LLAMA3 = str(ROOT / "config" / "paper-llama3-8b.yaml")
# the paper presets need a local reference-outputs file to plan
PAPER_FILES = {"gpt4_turbo_outputs.json": "[]", "overlay.yaml": "evaluation: {reference: gpt4_turbo_outputs.json}\n"}
# the paper on 4 GPUs with DeepSpeed ZeRO-3, the GPU rules in their own venv (a path with a space)
GPU_PYTHON = "/opt/rspo gpu/bin/python"
ZERO3 = ROOT / "config" / "accelerate" / "deepspeed_zero3.yaml"
MULTIPROC = (
    f"gpu_python: {GPU_PYTHON}\n"
    f"train: {{num_processes: 4, gradient_accumulation_steps: 2, accelerate_config: {ZERO3}}}\n"
    "evaluation: {reference: gpt4_turbo_outputs.json}\n"
)
DRY_RUNS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "none": (("-n", "-p", "--config", "reg=none"), {}),
    "forward_kl": (("-n", "-p", "--config", "reg=forward_kl"), {}),
    "mixed": (("-n", "-p", "--config", "reg=mixed"), {}),
    "all": (("-n", "-p", "--config", "reg=all"), {}),
    "list": (("-n", "-p", "--config", "reg=reverse_kl, is_forward_kl,chi2"), {}),
    "custom": (("-n", "-p", "--configfile", "custom.yaml", "--config", "reg=withfkl,myreg"), {"custom.yaml": CUSTOM}),
    "bogus": (("--config", "reg=bogus"), {}),
    "bogus_in_list": (("--config", "reg=mixed,nope"), {}),
    "bad_pattern": (("--config", "reg=bad name"), {}),
    "train_regularizer_key": (("-n", "--configfile", "bad.yaml"), {"bad.yaml": "train: {regularizer: chi2}\n"}),
    "reserved_name": (("-n", "--configfile", "bad.yaml"), {"bad.yaml": "regularizers: {base: {chi2: 0.1}}\n"}),
    "too_few_prompt_sets": (("-n", "--config", "iterations=4"), {}),
    "lint": (("--lint",), {}),
    "shards": (
        ("-n", "-p", "--configfile", "shards.yaml", "--config", "reg=forward_kl"),
        {"shards.yaml": "shards: {generate: 3, score: 2, logps: 2, eval_generate: 2}\n"
                        "evaluation: {self_bleu: {enabled: true}}\n"},
    ),
    "slurm": (
        ("-n", "--profile", "slurm", "--profile", "profiles/site-example", "--configfile", PAPER, "overlay.yaml",
         "--config", "reg=mixed"),
        {"gpt4_turbo_outputs.json": "[]", "overlay.yaml": "evaluation: {reference: gpt4_turbo_outputs.json}\n"},
    ),
    "paper_llama3": (("-n", "-p", "--configfile", LLAMA3, "overlay.yaml"), PAPER_FILES),
    "paper_mistral_cycled": (
        ("-n", "-p", "--configfile", PAPER, "overlay.yaml", "--config", "reg=none", "iterations=4", "cycle_prompts=True"),
        PAPER_FILES,
    ),
    "multiproc": (
        ("-n", "-p", "--configfile", PAPER, "overlay.yaml", "--config", "reg=mixed"),
        {"gpt4_turbo_outputs.json": "[]", "overlay.yaml": MULTIPROC},
    ),
    "multiproc_without_config": (("-n", "--configfile", "bad.yaml"), {"bad.yaml": "train: {num_processes: 2}\n"}),
}


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Plans every entry of DRY_RUNS in its own run folder: key -> (exit code, output, folder)."""
    from concurrent.futures import ThreadPoolExecutor

    runs = {}
    for key, (args, files) in DRY_RUNS.items():
        run = make_workdir(tmp_path_factory.mktemp(key))
        for name, text in files.items():
            (run / name).write_text(text)
        # file arguments are relative to the run folder; snakemake itself starts in the repository root
        args = [str(run / a) if a in files else a for a in args]
        runs[key] = (run, ["--cores", "2", *args] if key != "lint" else args)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(smk, run, *args) for key, (run, args) in runs.items()}
        return {key: (*futures[key].result(), runs[key][0]) for key in runs}


# default config: T iterations, self-BLEU off, pi_0 = the embedded SmolLM2 (prepared by a rule)
T = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["iterations"]
COMMON = {
    "prepare_models": 1,
    "prepare_prompts": T + 1,  # iter1..iterT, eval
    "summarize": 1,
    "all": 1,
}


def expected(n_regs: int, forward_kl: bool) -> dict[str, int]:
    per_iteration = 1 + (T - 1) * n_regs  # base/iter1 + each reg's iter2..iterT
    evaluated = 1 + T * n_regs  # pi_0 + pi_1..pi_T per reg
    counts = dict(COMMON, train=T * n_regs)
    counts.update({rule: per_iteration for rule in ("generate", "score", "pairs", "logps")})
    counts.update({rule: evaluated for rule in ("eval_generate", "eval_outputs", "annotate", "metrics")})
    if forward_kl:
        counts["generate_ref"] = T  # mu's samples on each iteration's prompts, shared
    return counts


def train_regularizers(out: str) -> dict[str, dict]:
    """{output model folder: params.regularizer} of every planned train job."""
    found = {}
    for cmd in shell_commands(out, "train"):
        params = json.loads(re.search(r"--params '([^']*)'", cmd).group(1))
        found[re.search(r"--out (\S+)", cmd).group(1)] = params["regularizer"]
    return found


@pytest.mark.parametrize(
    "key, regs, forward_kl",
    [
        ("none", ["none"], False),
        ("forward_kl", ["forward_kl"], True),
        ("mixed", ["mixed"], False),
        ("list", ["reverse_kl", "is_forward_kl", "chi2"], False),
        ("all", PRESETS, True),
        ("custom", ["withfkl", "myreg"], True),
    ],
)
def test_dry_run_plans_expected_jobs(dry, key, regs, forward_kl):
    rc, out, _ = dry[key]
    assert rc == 0, out
    assert job_counts(out) == expected(len(regs), forward_kl)
    # iteration 1 comes from pi_0 once, whatever the number of regularizers
    assert len(re.findall(r"output: results/base/iter1/responses\.jsonl$", out, re.M)) == 1
    assert not re.search(r"output: results/(?!base/)\w+/iter1/responses\.jsonl", out)
    # every regularizer trains pi_1..pi_T with its own {term: lambda} (config `regularizers`)
    lambdas = {
        "none": {}, "reverse_kl": {"reverse_kl": 0.5}, "forward_kl": {"forward_kl": 0.1},
        "is_forward_kl": {"is_forward_kl": 0.1}, "chi2": {"chi2": 0.1},
        "mixed": {"is_forward_kl": 0.1, "reverse_kl": 0.5},
        "myreg": {"is_forward_kl": 0.05, "chi2": 0.2}, "withfkl": {"forward_kl": 0.3},
    }
    assert train_regularizers(out) == {
        f"results/{reg}/iter{t}/model": lambdas[reg] for reg in regs for t in range(1, T + 1)
    }
    # regularizers with a forward_kl term (and only they) train with mu's samples
    with_ref = [c for c in shell_commands(out, "train") if "--ref-samples results/base/iter" in c]
    assert len(with_ref) == (T if forward_kl else 0)
    assert all(re.search(r"--out results/(forward_kl|withfkl)/", c) for c in with_ref)


def test_dry_run_commands_follow_the_layout(dry):
    rc, out, _ = dry["mixed"]
    assert rc == 0, out
    cmds = " ".join(shell_commands(out, "train"))
    # iteration 1 trains pi_0 on the shared cache; iteration 2 starts from pi_1 on mixed's own data
    assert "--pairs results/base/iter1/pairs_logps.jsonl --model resources/models/smollm2-135m-instruct" in cmds
    assert "--pairs results/mixed/iter2/pairs_logps.jsonl --model results/mixed/iter1/model" in cmds
    assert '"learning_rate":2e-05' in cmds  # config/config.yaml
    # the log-prob cache gets only the fields it depends on (not the optimiser or the regularizer)
    logps = shell_commands(out, "logps")
    assert len(logps) == T
    assert json.loads(re.search(r"--params '([^']*)'", logps[0]).group(1)) == {
        "logps_batch_size": 8,
        "logps_chunk_size": 256,
        "max_length": 256,
        "max_prompt_length": 128,
        "precision": "auto",
    }
    assert "--last-model results/mixed/iter1/model --ref-model resources/models/smollm2-135m-instruct" in " ".join(logps)
    # mu's samples (forward_kl) use the training sampling with the next seed: fresh samples at t = 1
    rc, out, _ = dry["forward_kl"]
    ref = shell_commands(out, "generate_ref")
    assert len(ref) == T and all("--model resources/models/smollm2-135m-instruct" in c for c in ref)
    sampling = json.loads(re.search(r"--params '([^']*)'", ref[0]).group(1))["sampling"]
    assert sampling == {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 1,
                        "seeding": "per_sample"}
    # pi_2 is annotated against pi_0's outputs
    annotate = " ".join(shell_commands(dry["mixed"][1], "annotate"))
    assert ("--outputs results/mixed/eval/pi2/model_outputs.json"
            " --reference results/base/eval/pi0/model_outputs.json") in annotate


def test_dry_run_with_shards_plans_n_jobs_and_a_local_merge_per_step(dry):
    """config `shards` (tests/test_workflow_shards.py runs it): N jobs per sharded step, one merge each."""
    rc, out, _ = dry["shards"]
    assert rc == 0, out
    counts = expected(1, forward_kl=True)
    evaluated = counts["eval_generate"]
    counts.update(selfbleu_generate=evaluated, self_bleu=evaluated, prepare_prompts=T + 2)  # self-BLEU on
    shards = {"generate": 3, "generate_ref": 3, "score": 2, "logps": 2, "eval_generate": 2, "selfbleu_generate": 2}
    for rule, n in shards.items():
        counts[f"{rule}_merge"] = counts[rule]
        counts[rule] *= n
    assert job_counts(out) == counts
    generate = shell_commands(out, "generate")
    assert any("--out results/base/iter1/shards/responses.2-of-3.jsonl" in c and c.endswith(
        "--shard 2/3 > logs/base/iter1/shards/generate.2-of-3.log 2>&1") for c in generate), generate
    merge = " ".join(shell_commands(out, "logps_merge"))
    assert ("merge --kind pairs_logps --source results/base/iter1/pairs.jsonl --out results/base/iter1/pairs_logps.jsonl"
            " results/base/iter1/shards/pairs_logps.1-of-2.jsonl results/base/iter1/shards/pairs_logps.2-of-2.jsonl"
            ) in merge
    # the merges only move files: local rules (a dry run does not show it, the rule files do)
    text = "".join(f.read_text() for f in (ROOT / "workflow" / "rules").glob("*.smk"))
    blocks = dict(re.findall(r"^ *rule (\w+_merge):\n(.*?)(?=^ *rule |^if |\Z)", text, re.M | re.S))
    assert set(blocks) == {f"{rule}_merge" for rule in shards}
    assert all("localrule: True" in block for block in blocks.values())


@pytest.mark.parametrize(
    "key, message, value",
    [
        ("bogus", "unknown regularizer 'bogus'", "reg='bogus'"),
        ("bogus_in_list", "unknown regularizer 'nope'", "reg='mixed,nope'"),
        ("bad_pattern", "reg: 'bad name' does not match", "'bad name'"),
    ],
)
def test_invalid_reg_fails_before_any_job(dry, key, message, value):
    rc, out, run = dry[key]
    assert rc != 0
    assert message in out and value in out, out
    assert "Job stats" not in out
    assert not (run / "results").exists() and not (run / "resources").exists()


@pytest.mark.parametrize(
    "key, message",
    [
        ("train_regularizer_key", "'regularizer' was unexpected"),
        ("reserved_name", "should not be valid under {'enum': ['all', 'base', 'prompts', 'plots']}"),
        ("too_few_prompt_sets", "lists 3 prompt set(s) but iterations = 4"),
    ],
)
def test_config_errors_name_the_problem(dry, key, message):
    rc, out, _ = dry[key]
    assert rc != 0 and message in out, out


def test_schema_defaults_mirror_rspo_config():
    """A config holding only `reg` gets, through the schema's defaults, RSPOConfig's defaults."""
    import dataclasses

    from snakemake.utils import validate

    from rspo.config import RSPOConfig, to_dict

    config = {"reg": "none"}
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    want = to_dict(RSPOConfig(reg="none"))
    del want["train"]["regularizer"]  # set from `reg` by the workflow, not a config key
    for source in [*want["prompts"], want["evaluation"]["prompts"]]:
        # a prompt source names exactly one of embedded / path / dataset: the other two stay unset
        for key in ("embedded", "path", "dataset"):
            if source[key] is None:
                del source[key]
    assert config == want
    assert {f.name for f in dataclasses.fields(RSPOConfig)} == set(config)


@pytest.mark.parametrize("name", ["config.yaml", "paper-mistral7b.yaml", "paper-llama3-8b.yaml"])
def test_shipped_configs_load_as_rspo_config(name):
    from rspo.config import load_config

    cfg = load_config(ROOT / "config" / name)
    assert set(cfg.regularizers) >= set(PRESETS)


def test_shipped_regularizer_lambdas_are_the_presets():
    from rspo.losses import REGULARIZER_PRESETS

    for name in ("config.yaml", "paper-mistral7b.yaml", "paper-llama3-8b.yaml"):
        shipped = yaml.safe_load((ROOT / "config" / name).read_text())["regularizers"]
        assert {k: shipped[k] for k in PRESETS} == {k: dict(v) for k, v in REGULARIZER_PRESETS.items()}


MISTRAL_PINNED = "mistralai/Mistral-7B-Instruct-v0.2@1296dc8fd9b21e6424c9c305c06db9ae60c03ace"  # generate.py's


@pytest.mark.parametrize("name", ["paper-mistral7b.yaml", "paper-llama3-8b.yaml"])
def test_paper_presets_follow_the_authors(name):
    """Read through the config system: what the authors' code does where it changes the numbers."""
    from rspo.config import load_config

    cfg = load_config(ROOT / "config" / name)
    assert cfg.train.max_grad_norm is None  # no gradient_clipping in their DeepSpeed config: no clipping
    assert cfg.train.save_dtype == "bf16"  # DeepSpeed ZeRO-3's 16-bit save
    assert cfg.judge.name == "pairrm" and cfg.judge.prompt_form == "chat"  # rank.py's templated prompt
    assert cfg.generation.sampling.seeding == "passes" and cfg.generation.sampling.seed == 0  # seeds 0, 50, ...
    assert cfg.evaluation.generation.sampling.seed == 2024  # test_alpacaeval.py
    assert not cfg.cycle_prompts and len(cfg.prompts) == cfg.iterations == 3
    assert [p.dataset for p in cfg.prompts] == [f"UCLA-AGI/data-mistral-7b-instruct-sppo-iter{i}" for i in (1, 2, 3)]
    t = cfg.train
    assert (t.eta, t.optimizer, t.learning_rate, t.max_length, t.max_prompt_length) == (1000.0, "rmsprop", 5e-7, 1024, 512)
    assert t.per_device_batch_size * t.gradient_accumulation_steps == 64 and t.num_epochs == 1.0
    if name == "paper-mistral7b.yaml":
        assert cfg.policy == MISTRAL_PINNED
    else:
        assert cfg.policy == "meta-llama/Meta-Llama-3-8B-Instruct" and t.is_clip == 7.0  # sppo_forwardimportance7


def _params(cmd: str) -> dict:
    return json.loads(re.search(r"--params '([^']*)'", cmd).group(1))


def test_paper_llama3_preset_plans_the_authors_recipe(dry):
    rc, out, _ = dry["paper_llama3"]
    assert rc == 0, out
    counts = job_counts(out)
    # reg = none,is_forward_kl and T = 3: iteration 1 shared, iterations 2-3 per regularizer; 7 iterates evaluated
    assert (counts["generate"], counts["train"], counts["eval_generate"], counts["selfbleu_generate"]) == (5, 6, 7, 7)
    assert "prepare_models" not in counts and "generate_ref" not in counts
    train = [_params(c) for c in shell_commands(out, "train")]
    assert sorted(json.dumps(p["regularizer"]) for p in train) == ['{"is_forward_kl": 0.1}'] * 3 + ["{}"] * 3
    assert all(p["max_grad_norm"] is None and p["save_dtype"] == "bf16" and p["is_clip"] == 7.0 for p in train)
    assert _params(shell_commands(out, "generate")[0])["sampling"] == {
        "n": 5, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048, "seed": 0, "seeding": "passes"}
    judge = _params(shell_commands(out, "score")[0])
    assert (judge["name"], judge["prompt_form"]) == ("pairrm", "chat")
    assert {_params(c)["sampling"]["seed"] for c in shell_commands(out, "eval_generate")} == {2024}
    assert "--model meta-llama/Meta-Llama-3-8B-Instruct --prompts results/prompts/iter1.jsonl" in " ".join(
        shell_commands(out, "generate"))
    assert "--policy meta-llama/Meta-Llama-3-8B-Instruct" in shell_commands(out, "summarize")[0]


def test_paper_mistral_preset_pins_the_model_and_cycles_prompt_sets(dry):
    """The pinned policy reaches every step that loads pi_0 or mu; with cycle_prompts, iteration 4 reuses
    the first prompt set (the authors' A, B, C, A schedule)."""
    rc, out, _ = dry["paper_mistral_cycled"]
    assert rc == 0, out
    sources = {re.search(r"--out results/prompts/(\w+)\.jsonl", c).group(1): _params(c).get("dataset")
               for c in shell_commands(out, "prepare_prompts")}
    assert [sources[f"iter{t}"] for t in (1, 2, 3, 4)] == [
        f"UCLA-AGI/data-mistral-7b-instruct-sppo-iter{i}" for i in (1, 2, 3, 1)]
    assert job_counts(out)["train"] == 4
    assert f"--model {MISTRAL_PINNED} --prompts results/prompts/iter1.jsonl" in " ".join(shell_commands(out, "generate"))
    assert f"--last-model {MISTRAL_PINNED} --ref-model {MISTRAL_PINNED}" in " ".join(shell_commands(out, "logps"))
    assert f"--pairs results/base/iter1/pairs_logps.jsonl --model {MISTRAL_PINNED}" in " ".join(
        shell_commands(out, "train"))
    assert all(_params(c)["max_grad_norm"] is None for c in shell_commands(out, "train"))


def test_lint_and_format(dry):
    rc, out, _ = dry["lint"]
    assert rc == 0 and "Congratulations" in out, out
    if importlib.util.find_spec("snakefmt") is None:
        pytest.skip("snakefmt is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "workflow/"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slurm_profile_resolves_gpu_resources(dry):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    assert (ROOT / "slurm" / "config.yaml").exists()  # `--profile slurm` from the root finds it
    rc, out, _ = dry["slurm"]
    assert rc == 0, out
    counts = job_counts(out)
    # the paper: T = 3, self-BLEU on, a hub policy (no prepare_models)
    assert counts["train"] == 3 and counts["selfbleu_generate"] == 4
    # its shards (config/README.md): generation in 4 jobs per iteration, scoring and log-probs in 2, each merged once
    assert counts["generate"] == 3 * 4 and counts["score"] == counts["logps"] == 3 * 2
    assert counts["generate_merge"] == counts["score_merge"] == counts["logps_merge"] == 3
    assert "eval_generate_merge" not in counts
    assert "prepare_models" not in counts
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\[|\Z)", out, re.M | re.S)
    resources = {rule: re.search(r"resources: (.*)", block).group(1) for rule, block in blocks}
    # the site profile (profiles/site-example) adds partition, account, QoS, GPU model and constraint
    for rule in ("generate", "train", "logps", "score", "eval_generate"):
        assert "gpu=1" in resources[rule] and "gpu_jobs=1" in resources[rule], (rule, resources[rule])
        assert "cpus_per_gpu=8" in resources[rule], (rule, resources[rule])  # threads 8 / 1 GPU (rspo.sizing)
        for setting in ("slurm_partition=gpu", "slurm_account=my_project", "qos=normal", "gpu_model=a100",
                        "constraint=a100_80gb"):
            assert setting in resources[rule], (rule, setting, resources[rule])
    assert "runtime=1440" in resources["train"] and "mem_mb=128000" in resources["train"]
    # a shard job is sized for its shard: the paper's 12 h generation in 4 jobs, 240 min scoring in 2
    assert re.search(r"\bruntime=190\b", resources["generate"]) and re.search(r"\bruntime=130\b", resources["score"])
    assert "gpu=" not in resources["pairs"] and "slurm_partition=cpu" in resources["pairs"]
    assert "slurm_account=my_project" in resources["pairs"]
    assert "gpu=0" in resources["annotate"] and "slurm_partition=cpu" in resources["annotate"]  # GPT-4-turbo: an API


def test_gpu_rules_run_the_gpu_python_and_train_runs_accelerate_launch(dry):
    import shlex

    rc, out, _ = dry["multiproc"]
    assert rc == 0, out
    gpu_python = shlex.quote(GPU_PYTHON)
    for rule in ("generate", "score", "logps", "eval_generate", "selfbleu_generate"):
        cmds = shell_commands(out, rule)
        assert cmds and all(c.startswith(f"Shell command: {gpu_python} -m rspo --threads ") for c in cmds), rule
    # rules without a GPU keep the driver's interpreter (annotate: the GPT-4-turbo API, gpu: 0)
    for rule in ("prepare_prompts", "pairs", "annotate", "metrics", "self_bleu", "summarize"):
        cmds = shell_commands(out, rule)
        assert cmds and all(" python -m rspo --threads " in c for c in cmds), rule
        # (summarize's --run-config, recorded in results/manifest.json, names train.accelerate_config as data)
        assert not any(GPU_PYTHON in c or "accelerate.commands.launch" in c for c in cmds), rule
    launch = f"Shell command: {gpu_python} -m accelerate.commands.launch --num_processes 4 --config_file {ZERO3} -m rspo"
    train = shell_commands(out, "train")
    assert len(train) == 3 and all(c.startswith(launch + " --threads ") for c in train), train[0]
    params = json.loads(re.search(r"--params '([^']*)'", train[0]).group(1))
    assert params["num_processes"] == 4 and params["accelerate_config"] == str(ZERO3)
    # one GPU per process for the train job; the other GPU rules keep one
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\[|\Z)", out, re.M | re.S)
    resources = {rule: re.search(r"resources: (.*)", block).group(1) for rule, block in blocks}
    assert re.search(r"\bgpu=4\b", resources["train"]) and re.search(r"\bgpu=1\b", resources["generate"])
    # the accelerate config is an input of the train jobs (a changed file reruns them)
    assert re.search(rf"^rule train:\n    input: .*{re.escape(str(ZERO3))}", out, re.M)


def test_several_processes_need_an_accelerate_config(dry):
    rc, out, _ = dry["multiproc_without_config"]
    assert rc != 0 and "config train.num_processes = 2 needs train.accelerate_config" in out, out


# --------------------------------------------------------------------------- end to end

STEPS = ["prepare-prompts", "generate", "score", "pairs", "logps", "train", "eval-outputs", "annotate",
         "metrics", "self-bleu", "summarize"]


def missing_steps() -> list[str]:
    from rspo.cli import COMMANDS

    return [s for s in STEPS if importlib.util.find_spec(f"rspo.commands.{COMMANDS[s][0]}") is None]


def tiny_e2e_config(policy: Path) -> dict:
    """The tiny config of the end-to-end run (tests/conftest.py's ``e2e``) with ``policy`` as pi_0, the CPU
    kernels pinned at AVX2 where the machine has it (so the run checks that the pin reaches every step)."""
    from rspo.determinism import cpu_flags

    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["policy"] = str(policy)
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= cpu_flags():
        config["cpu_isa"] = "avx2"
    return config


@pytest.mark.slow
def test_e2e_artefacts(e2e):
    from rspo.artifacts import read_json, read_table

    res = e2e / "results"
    assert len(read_table(res / "prompts" / "iter1.jsonl", "prompts")) == 3
    assert len(read_table(res / "prompts" / "eval.jsonl", "prompts")) == 3
    assert len(read_table(res / "prompts" / "selfbleu.jsonl", "prompts")) == 2  # num_instructions
    data_dirs = [res / "base" / "iter1", res / "mixed" / "iter2", res / "forward_kl" / "iter2"]
    for d in data_dirs:
        rows = read_table(d / "responses.jsonl", "responses")
        assert len(rows) == 3 and all(len(r["responses"]) == 3 for r in rows)
        prefs = read_table(d / "preferences.jsonl", "preferences")
        assert all(len(p["logits"]) == 3 and all(len(row) == 3 for row in p["logits"]) for p in prefs)
        assert read_table(d / "pairs.jsonl", "pairs") is not None
        assert "pairs_logps.jsonl" in os.listdir(d) and (d / "pairs_stats.json").exists()
    # iteration 1 is shared: nothing sampled under a regularizer's own iter1 folder
    assert not (res / "mixed" / "iter1" / "responses.jsonl").exists()
    for t in (1, 2):  # mu's samples for forward_kl only
        assert len(read_table(res / "base" / f"iter{t}" / "ref_responses.jsonl", "responses")) == 3
    for reg in ("mixed", "forward_kl"):
        for t in (1, 2):
            model = res / reg / f"iter{t}" / "model"
            assert (model / "config.json").exists() and (model / "manifest.json").exists()
            assert len(read_table(res / reg / f"iter{t}" / "train_log.jsonl", "train_log")) >= 1
    evals = [res / "base" / "eval" / "pi0"] + [res / r / "eval" / f"pi{t}" for r in ("mixed", "forward_kl")
                                               for t in (1, 2)]
    for d in evals:
        outputs = read_json(d / "model_outputs.json")
        assert len(outputs) == 3 and {"instruction", "output", "generator"} <= set(outputs[0])
        assert 0.0 <= read_json(d / "metrics.json")["win_rate"] <= 100.0
        assert read_json(d / "selfbleu.json")["n"] == 3
    assert read_json(res / "mixed" / "eval" / "pi1" / "model_outputs.json")[0]["generator"] == "mixed-pi1"


@pytest.mark.slow
def test_e2e_summary_table(e2e):
    import pandas as pd

    table = pd.read_csv(e2e / "results" / "summary.csv")
    assert sorted(zip(table["reg"], table["iteration"], strict=True)) == [
        ("forward_kl", 0), ("forward_kl", 1), ("forward_kl", 2), ("mixed", 0), ("mixed", 1), ("mixed", 2)
    ]
    md = (e2e / "results" / "summary.md").read_text()
    assert "mixed" in md and "forward_kl" in md
    assert (e2e / "results" / "paper_comparison.md").exists()
    assert any(p.suffix == ".png" for p in (e2e / "results" / "plots").iterdir())


@pytest.mark.slow
def test_e2e_rerun_plans_exactly_the_affected_jobs(e2e, tmp_path):
    rc, out = smk(e2e, "-n", "--cores", "2")
    assert rc == 0 and "Nothing to be done" in out, out

    changed = tmp_path / "lr.yaml"
    changed.write_text("train: {learning_rate: 5.0e-4}\n")
    rc, out = smk(e2e, "-n", "--cores", "2", "--configfile", str(changed))
    assert rc == 0, out
    # pi_1.. change; pi_0's data, pi_0's evaluation, prompts and mu's samples do not
    assert job_counts(out) == {
        "train": 4,  # 2 regs x 2 iterations
        "generate": 2, "score": 2, "pairs": 2, "logps": 2,  # each reg's iteration 2
        "eval_generate": 4, "eval_outputs": 4, "annotate": 4, "metrics": 4,  # pi_1, pi_2 per reg
        "selfbleu_generate": 4, "self_bleu": 4,
        "summarize": 1, "all": 1,
    }
    assert not re.search(r"output: results/(base|prompts)/", out)


@pytest.mark.slow
def test_e2e_report(e2e):
    rc, out = smk(e2e, "--report", "results/report.html")
    assert rc == 0, out
    html = (e2e / "results" / "report.html").read_text(errors="replace")
    assert "summary.csv" in html and "paper_comparison.md" in html and ".png" in html
