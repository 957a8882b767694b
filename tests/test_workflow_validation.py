"""A bad config is rejected before any job runs: ONE line naming the key and value, exit status 1,
no Python frames, whether or not results already exist (rspo.preflight, called by common.smk).

Every case below is a real ``snakemake`` invocation on its own run folder (two at a time), like a
user's; the expected line is matched from its start. More values that fail the same way (same
check, another key) are unit-tested in-process in tests/test_preflight.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_workflow import ROOT, make_workdir, smk

# key -> (config overlay merged into config/config.yaml, extra snakemake args, expected error line)
# `{run}` in an overlay or a line is the run folder.
CASES: dict[str, tuple[dict, tuple[str, ...], str]] = {
    "policy_missing": ({"policy": "/nonexistent/model"}, (),
                       "policy: '/nonexistent/model': no such local folder (a hub id looks like org/name)"),
    "policy_hub_offline": ({"policy": "rspo-test/no-such-model"}, (),
                           "policy: 'rspo-test/no-such-model' is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and "
                           "it is not in the local cache; download it where the hub is reachable (huggingface-cli "
                           "download rspo-test/no-such-model) or set policy to a local folder"),
    "judge_model_missing": ({"judge": {"name": "reward_model", "model": "./rm"}}, (),
                            "judge.model: './rm': no such local folder"),
    "k_is_1": ({"generation": {"sampling": {"n": 1}}}, (),
               "generation.sampling.n: 1 is less than the minimum of 2 (K responses per prompt; a chosen/rejected "
               "pair needs K >= 2)"),
    "eval_n_is_2": ({"evaluation": {"generation": {"sampling": {"n": 2}}}}, (),
                    "evaluation.generation.sampling.n: 1 was expected (one output per instruction is evaluated)"),
    "judge_name": ({"judge": {"name": "gpt5"}}, (),
                   "judge.name: 'gpt5' is not one of ['embedded', 'pairrm', 'reward_model', 'llm']"),
    "annotator_name": ({"evaluation": {"annotator": {"name": "gpt5"}}}, (), "evaluation.annotator.name: 'gpt5' is not one of"),
    "prompt_length": ({"train": {"max_prompt_length": 256}}, (),
                      "train.max_prompt_length = 256 must be less than train.max_length = 256"),
    "batch_size_0": ({"train": {"per_device_batch_size": 0}}, (),
                     "train.per_device_batch_size: 0 is less than the minimum of 1"),
    "prompt_path_missing": ({"prompts": [{"embedded": "train1"}, {"path": "p2.jsonl"}, {"embedded": "train3"}]}, (),
                            "prompts[1].path: 'p2.jsonl': no such file (a local JSON, JSONL or Parquet file of prompts)"),
    "prompt_split": ({"prompts": [{"embedded": "train1"}, {"embedded": "train2"}, {"embedded": "train9"}]}, (),
                     "prompts[2].embedded: no split 'train9' in the embedded prompt set; splits: eval, train1, "
                     "train2, train3"),
    "eval_reference_missing": ({"evaluation": {"reference": "gpt4.json"}}, (),
                               "evaluation.reference: 'gpt4.json': no such file"),
    "df_gamed_missing": ({"evaluation": {"df_gamed": "df_gamed.csv"}}, (), "evaluation.df_gamed: 'df_gamed.csv': no such file"),
    "api_key_in_config": ({"judge": {"name": "llm", "model": "m", "options": {"api_key": "sk-in-the-config"}}}, (),
                          "judge.options.api_key: secrets are read from the environment only"),
    "unknown_reg": ({}, ("--config", "reg=bogus"), "reg='bogus': unknown regularizer 'bogus'"),
}
# a real run (no -n) with results present: the "Nothing to be done" case
RUNS = {"policy_missing", "policy_hub_offline"}


def _fill(value, run: Path):
    if isinstance(value, str):
        return value.replace("{run}", str(run))
    if isinstance(value, dict):
        return {k: _fill(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, run) for v in value]
    return value


def _merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """key -> (exit code, output, run folder, results before, results after), two runs at a time."""
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    runs = {}
    for key, (overlay, args, _) in CASES.items():
        run = tmp_path_factory.mktemp(key)
        make_workdir(run, _merge(default, _fill(overlay, run)))
        # results of an earlier run are present: the final targets exist
        for name in ("summary.csv", "summary.md", "paper_comparison.md"):
            (run / "results" / name).parent.mkdir(exist_ok=True)
            (run / "results" / name).write_text("earlier\n")
        before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".snakemake" not in p.parts)
        cmd = ["--cores", "2", *args] if key in RUNS else ["-n", "--cores", "2", *args]
        runs[key] = (run, cmd, before)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(smk, run, *cmd, timeout=300) for key, (run, cmd, _) in runs.items()}
        out = {}
        for key, (run, _, before) in runs.items():
            rc, text = futures[key].result()
            after = sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".snakemake" not in p.parts)
            out[key] = (rc, text, run, before, after)
        return out


@pytest.mark.parametrize("key", list(CASES))
def test_bad_config_is_one_line_before_any_job(outcomes, key):
    rc, out, run, before, after = outcomes[key]
    expected = _fill(CASES[key][2], run)
    errors = [line for line in out.splitlines() if line.startswith("rspo: config error: ")]
    assert rc == 1, out
    assert len(errors) == 1, out
    assert errors[0].startswith(f"rspo: config error: {expected}"), out
    assert "Traceback" not in out and 'File "' not in out, out
    assert "Job stats" not in out and "Nothing to be done" not in out, out
    assert after == before  # nothing written: no job ran (results, logs, resources)


def test_hub_id_offline_is_a_warning_in_a_dry_run(outcomes, tmp_path):
    """``snakemake -n`` plans a cluster run on a login node without the hub: a warning, not an error."""
    rc, out, run, _, _ = outcomes["policy_hub_offline"]
    rc, out = smk(run, "-n", "--cores", "2")
    assert rc == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("rspo: warning: ")]
    assert warnings == [f"rspo: warning: {CASES['policy_hub_offline'][2]} (a run would stop here)"]


def test_unreadable_prompt_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file: the permission check is unit-tested in tests/test_preflight.py")
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "p.jsonl").chmod(0)
    run = make_workdir(tmp_path, _merge(default, {"evaluation": {"prompts": {"embedded": None, "path": "p.jsonl"}}}))
    rc, out = smk(run, "-n", "--cores", "2")
    assert rc == 1 and "rspo: config error: evaluation.prompts.path: 'p.jsonl' is not readable" in out, out
