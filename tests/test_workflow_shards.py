"""config `shards`: the workflow splits generation, scoring, log-probs and evaluation generation into
N jobs and merges them locally; the merged files are byte-identical for N = 1, 2, 3.

The tiny test config (tests/workflow_config_tiny.yaml) with more prompts and odd batch sizes, so
that every step has several units and the shards really split them: iteration 1's 36 prompts are 9
generation batches of 4 and 3 judge chunks of 16; their pairs are scored in batches of 5 sequences
(a batch cuts pairs apart); the 10 evaluation prompts are 3 batches of 4. Only iteration 1's data
and pi_0's evaluation responses are built (no training), and the judge is the tiny random reward
model (scored in batches of 16 responses across each chunk's prompts, as any batched judge), whose
jobs start faster than the embedded judge's, to keep it cheap.
"""

from __future__ import annotations

import pytest
import yaml
from test_workflow import TINY_CONFIG, job_counts, make_workdir, missing_steps, smk

from rspo.artifacts import read_table

STEPS = ("generate", "score", "logps", "eval_generate")
TARGETS = ["results/base/iter1/pairs_logps.jsonl", "results/base/eval/pi0/responses.jsonl"]
COMPARED = [
    "results/base/iter1/responses.jsonl",
    "results/base/iter1/preferences.jsonl",
    "results/base/iter1/pairs.jsonl",
    "results/base/iter1/pairs_logps.jsonl",
    "results/base/eval/pi0/responses.jsonl",
]


def sharded_config(policy, reward_model, n: int) -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["policy"] = str(policy)
    config["judge"] = {"name": "reward_model", "model": str(reward_model), "batch_size": 16}
    config["prompts"][0]["limit"] = 36
    config["train"]["logps_batch_size"] = 5
    config["evaluation"]["prompts"]["limit"] = 10
    config["shards"] = dict.fromkeys(STEPS, n)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_reward_model_dir):
    """{N: (run folder, snakemake output)} for N = 1, 2, 3."""
    missing = missing_steps()
    if missing:
        pytest.skip(f"steps not implemented yet: {', '.join(missing)}")
    out = {}
    for n in (1, 2, 3):
        run = make_workdir(tmp_path_factory.mktemp(f"shards{n}"), sharded_config(tiny_model_dir, tiny_reward_model_dir, n))
        rc, log = smk(run, "--cores", "2", "--show-failed-logs", *TARGETS, timeout=900)
        assert rc == 0, log
        out[n] = (run, log)
    return out


@pytest.mark.slow
def test_merged_artefacts_are_byte_identical_for_every_shard_count(runs):
    one = runs[1][0]
    assert len(read_table(one / "results/base/iter1/responses.jsonl", "responses")) == 36
    assert len(read_table(one / "results/base/eval/pi0/responses.jsonl", "responses")) == 10
    assert len(read_table(one / "results/base/iter1/pairs_logps.jsonl", "pairs_logps")) == 36  # no ties
    for n in (2, 3):
        run = runs[n][0]
        for path in COMPARED:
            assert (run / path).read_bytes() == (one / path).read_bytes(), (n, path)


@pytest.mark.slow
def test_each_step_ran_as_n_shard_jobs_and_a_local_merge(runs):
    assert job_counts(runs[1][1]) == {"prepare_prompts": 2, "generate": 1, "score": 1, "pairs": 1, "logps": 1,
                                      "eval_generate": 1}
    assert not (runs[1][0] / "results/base/iter1/shards").exists()
    for n in (2, 3):
        run, log = runs[n]
        counts = {rule: n for rule in STEPS} | {f"{rule}_merge": 1 for rule in STEPS}
        assert job_counts(log) == {"prepare_prompts": 2, "pairs": 1, **counts}
        parts = {
            "responses": ("results/base/iter1/shards/responses", "responses"),
            "preferences": ("results/base/iter1/shards/preferences", "preferences"),
            "logps": ("results/base/iter1/shards/pairs_logps", "pairs_logps_part"),
            "eval": ("results/base/eval/pi0/shards/responses", "responses"),
        }
        for stem, kind in parts.values():
            sizes = [len(read_table(run / f"{stem}.{i}-of-{n}.jsonl", kind)) for i in range(1, n + 1)]
            assert all(sizes), (stem, sizes)  # every shard had work: the units really were split
        # round robin over 9 generation batches of 4 prompts (the last batch is full too)
        gen = [len(read_table(run / f"results/base/iter1/shards/responses.{i}-of-{n}.jsonl", "responses"))
               for i in range(1, n + 1)]
        assert gen == {2: [20, 16], 3: [12, 12, 12]}[n]
