"""config `shards`: the workflow splits generation, scoring, log-probs and evaluation generation into
N jobs and merges them locally; the merged files are byte-identical to the single jobs' files.

Two runs of the tiny test config (tests/workflow_config_tiny.yaml), at once: every step as one job
(N = 1), and every step sharded, with 3 shards for generation and log-probs and 2 for scoring and
evaluation generation, so that N = 1, 2 and 3 all run within the CI budget (tests/test_sharding.py
checks each step's batches at N = 2, 3 and 5). More prompts and odd batch sizes than the tiny
config's, so that every step has several units and the shards really split them: iteration 1's 36
prompts are 9 generation batches of 4 and 3 judge chunks of 16 (2 shards: chunks 1 and 3, chunk 2);
their 72 sequences are scored in 15 batches of 5 (a batch cuts pairs apart); the 10 evaluation prompts
are 3 batches of 4. Only iteration 1's data and pi_0's evaluation responses are built (no training),
and the judge is the tiny random reward model (scored in batches of 16 responses across each chunk's
prompts, as any batched judge), whose jobs start faster than the embedded judge's, to keep it cheap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from test_workflow import TINY_CONFIG, job_counts, make_workdir, missing_steps, smk

from rspo.artifacts import read_table

STEPS = ("generate", "score", "logps", "eval_generate")
SHARDS = {"single": dict.fromkeys(STEPS, 1), "sharded": {"generate": 3, "score": 2, "logps": 3, "eval_generate": 2}}
TARGETS = ["results/base/iter1/pairs_logps.jsonl", "results/base/eval/pi0/responses.jsonl"]
COMPARED = [
    "results/base/iter1/responses.jsonl",
    "results/base/iter1/preferences.jsonl",
    "results/base/iter1/pairs.jsonl",
    "results/base/iter1/pairs_logps.jsonl",
    "results/base/eval/pi0/responses.jsonl",
]
# step -> (its parts under results/, their kind)
PARTS = {
    "generate": ("base/iter1/shards/responses", "responses"),
    "score": ("base/iter1/shards/preferences", "preferences"),
    "logps": ("base/iter1/shards/pairs_logps", "pairs_logps_part"),
    "eval_generate": ("base/eval/pi0/shards/responses", "responses"),
}


def tiny_config(policy, reward_model, shards: dict) -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["policy"] = str(policy)
    config["judge"] = {"name": "reward_model", "model": str(reward_model), "batch_size": 16}
    config["prompts"][0]["limit"] = 36
    config["train"]["logps_batch_size"] = 5
    config["evaluation"]["prompts"]["limit"] = 10
    config["shards"] = shards
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_reward_model_dir):
    """{"single" | "sharded": (run folder, snakemake output)}, run at the same time."""
    missing = missing_steps()
    if missing:
        pytest.skip(f"steps not implemented yet: {', '.join(missing)}")
    folders = {
        key: make_workdir(tmp_path_factory.mktemp(key), tiny_config(tiny_model_dir, tiny_reward_model_dir, shards))
        for key, shards in SHARDS.items()
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(smk, run, "--cores", "2", "--show-failed-logs", *TARGETS, timeout=900)
                   for key, run in folders.items()}
        out = {key: (folders[key], *futures[key].result()) for key in folders}
    for key, (_, rc, log) in out.items():
        assert rc == 0, (key, log)
    return {key: (run, log) for key, (run, _, log) in out.items()}


@pytest.mark.slow
def test_merged_artefacts_are_byte_identical_to_the_single_jobs(runs):
    single, sharded = runs["single"][0], runs["sharded"][0]
    assert len(read_table(single / "results/base/iter1/responses.jsonl", "responses")) == 36
    assert len(read_table(single / "results/base/eval/pi0/responses.jsonl", "responses")) == 10
    assert len(read_table(single / "results/base/iter1/pairs_logps.jsonl", "pairs_logps")) == 36  # no ties
    for path in COMPARED:
        assert (sharded / path).read_bytes() == (single / path).read_bytes(), path


@pytest.mark.slow
def test_each_step_ran_as_n_shard_jobs_and_a_local_merge(runs):
    single, log = runs["single"]
    assert job_counts(log) == {"prepare_prompts": 2, "pairs": 1, **dict.fromkeys(STEPS, 1)}
    assert not (single / "results/base/iter1/shards").exists()
    sharded, log = runs["sharded"]
    counts = SHARDS["sharded"]
    assert job_counts(log) == {"prepare_prompts": 2, "pairs": 1, **counts, **{f"{s}_merge": 1 for s in STEPS}}
    sizes = {}
    for step, (stem, kind) in PARTS.items():
        n = counts[step]
        sizes[step] = [len(read_table(sharded / f"results/{stem}.{i}-of-{n}.jsonl", kind)) for i in range(1, n + 1)]
    # round robin over the units: 9 generation batches of 4 prompts; judge chunks of 16, 16 and 4 prompts;
    # 15 log-prob batches of 5 sequences under one model (pi_0 = mu, scored once: 2 rows per sequence);
    # evaluation batches of 4, 4 and 2 prompts
    assert sizes == {"generate": [12, 12, 12], "score": [20, 16], "logps": [50, 50, 44], "eval_generate": [6, 4]}
