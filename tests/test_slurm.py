"""The workflow on a real SLURM cluster: a single-node slurmctld + slurmd started by
tests/slurm/cluster.sh, driven by `snakemake --profile slurm --profile tests/slurm/profile` (the
shipped site-independent profile plus the test cluster's site profile, the same overlay a user's site
profile is).

One run of the tiny workflow config (tests/workflow_config_tiny.yaml) with the model rules asking for
one of the cluster's fake GPUs: every rule that is not a local rule must run as a SLURM job (the
plugin's submissions, checked against `squeue --states=all`), and every artefact must equal, byte for
byte, the local `--cores 2` run of the same config (the session fixture `e2e`, shared with
tests/test_workflow.py). Then a job that fails on the cluster (a corrupted model) must fail the run
with the job's log in the output, and the run after the repair must complete with --rerun-incomplete.

Needs root (the daemons) and apt-get or an installed slurm-wlm; skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_reproducibility import artefacts
from test_workflow import job_counts, make_workdir, smk, tiny_e2e_config

from rspo.artifacts import read_table

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SITE = ROOT / "tests" / "slurm" / "profile"
PROFILES = ("--profile", "slurm", "--profile", str(SITE))
# rules declared `localrule: True` (they only move files): never submitted
LOCAL_RULES = {"all", "prepare_prompts", "pairs", "eval_outputs", "metrics", "self_bleu", "summarize"}
SUBMITTED = re.compile(r"^Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.$", re.M)


def cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root: tests/slurm/cluster.sh starts munged, slurmctld and slurmd"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurm-wlm is not installed and there is no apt-get to install it"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install '.[workflow]')"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        return (
            "this host has its own SLURM configuration (/etc/slurm/slurm.conf); not starting a test cluster"
        )
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The running cluster's folder; its daemons are stopped by PID file afterwards, also on failure."""
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    pid_files = [folder / "slurmctld.pid", folder / "slurmd.pid", folder / "munged.pid"]
    pids: list[int] = []
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=600
        )
        if proc.returncode == 3:
            pytest.skip(proc.stderr.strip())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pids = [int(f.read_text()) for f in pid_files if f.exists()]
        yield folder
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=120)
        still = [pid for pid in pids if alive(pid)]
        assert not still, f"daemons still running after cluster.sh stop: {still}"
        assert not Path("/etc/slurm/slurm.conf").is_symlink()


def squeue_jobs() -> dict[str, tuple[str, str, str]]:
    """Every job the controller remembers (MinJobAge = 1 h): id -> (state, gres per job, comment)."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-O", "JobID:|,State:|,tres-per-job:|,Comment:"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0].strip(): (r[1].strip(), r[2].strip(), r[3].strip()) for r in rows}


def tiny_config(policy: Path) -> dict:
    config = tiny_e2e_config(policy)  # the local run's config (tests/conftest.py's `e2e`)
    # the model rules ask for one of the cluster's (fake) GPUs: submitted with --gpus=1; nothing uses it
    config["resources"]["gpu_rules"]["gpu"] = 1
    return config


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory, tiny_model_dir, request):
    """The cluster run, (run folder, snakemake output). The local run it is compared with (the session
    fixture `e2e`) runs at the same time: the cluster run spends most of its time waiting on the queue
    and its status checks, so the two together take little more than the cluster run alone."""
    run = make_workdir(tmp_path_factory.mktemp("slurm_run"), tiny_config(tiny_model_dir))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(smk, run, *PROFILES, timeout=1500)
        try:
            request.getfixturevalue("e2e")
            # tests/test_reproducibility.py's run, made here to use the time the cluster run waits
            request.getfixturevalue("killed_and_resumed")
        finally:
            rc, out = future.result()
    seconds = time.monotonic() - start
    assert rc == 0, out
    print(
        f"\nSLURM run: {len(SUBMITTED.findall(out))} jobs submitted, {seconds:.0f} s (with the two local runs beside it)"
    )
    return run, out


def test_every_rule_but_the_local_ones_ran_as_a_slurm_job(cluster_run):
    run, out = cluster_run
    planned = job_counts(out)
    expected = {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}
    assert set(planned) - set(expected) == LOCAL_RULES  # the local rules were planned, and ran here
    submitted = SUBMITTED.findall(out)
    rules = Counter(re.search(r"/rule_(\w+?)/", log).group(1) for _, log in submitted)
    assert rules == expected
    jobs = squeue_jobs()
    for job_id, log in submitted:
        rule = re.search(r"/rule_(\w+?)/", log).group(1)
        state, gres, comment = jobs[job_id]
        assert state == "COMPLETED" and comment.startswith(f"rule_{rule}"), (job_id, jobs[job_id])
        assert gres == "gres:gpu:1", (rule, gres)  # every submitted rule here is a model rule
        # the plugin's log of each job (removed once the job succeeded; a failed job's stays)
        assert Path(log).is_relative_to(run / "logs" / "slurm"), log


def test_cluster_artefacts_equal_the_local_run(cluster_run, e2e):
    """Every file under results/ is byte-equal (manifests without their `created` time)."""
    run, _ = cluster_run
    remote, local = artefacts(run), artefacts(e2e)
    assert "results/summary.csv" in remote and len(remote) > 50
    assert sorted(remote) == sorted(local)
    assert [p for p in remote if remote[p] != local[p]] == []


def test_a_failed_cluster_job_fails_the_run_with_its_log_and_resumes(cluster, tmp_path, tiny_model_dir, e2e):
    """A corrupted model makes pi_0's evaluation job fail on the cluster; repaired, the rerun finishes."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    good = (model / "config.json").read_bytes()
    (model / "config.json").write_text("{ this is not json")
    run = make_workdir(tmp_path / "run", tiny_config(model))
    target = "results/base/eval/pi0/responses.jsonl"
    rc, out = smk(run, *PROFILES, target, timeout=600)
    assert rc != 0, out
    assert re.search(r"Error in rule eval_generate:.*SLURM-job '\d+' failed", out, re.S), out
    # the job's own log is printed (--show-failed-logs) and the SLURM log is named
    log = (run / "logs/base/eval/pi0/generate.log").read_text()
    assert log.strip() and log.strip().splitlines()[-1] in out, out
    assert "config.json" in log, log
    slurm_log = re.search(r"\S+/logs/slurm/rule_eval_generate/\S+\.log", out)
    assert slurm_log and "Error in rule eval_generate" in Path(slurm_log.group(0)).read_text(), out
    assert not (run / target).exists()

    (model / "config.json").write_bytes(good)
    rc, out = smk(run, *PROFILES, target, "--rerun-incomplete", timeout=600)
    assert rc == 0, out
    assert SUBMITTED.search(out), out
    # the local run's responses (its model is the same weights under another path, which rows name)
    rows = [{k: v for k, v in r.items() if k != "generator"} for r in read_table(run / target, "responses")]
    local = [{k: v for k, v in r.items() if k != "generator"} for r in read_table(e2e / target, "responses")]
    assert rows == local and len(rows) == 3
