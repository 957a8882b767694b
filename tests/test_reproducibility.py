"""Reproducibility, run manifests and kill -9 (issue 8).

The killed-and-resumed run of the tiny workflow is also the "second run with the same seed": it is
compared byte for byte with the session's uninterrupted run (``e2e`` in conftest.py), so the two
guarantees cost one workflow run together. Manifests are compared without their ``created`` time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rspo.artifacts import VOLATILE_MANIFEST_FIELDS, file_sha256, read_json, read_table

ROOT = Path(__file__).resolve().parents[1]
KILLS = 5


def artefacts(run: Path) -> dict[str, bytes]:
    """Every file under ``results/`` (but the HTML report, which test_e2e_report may add) by path;
    manifests without the fields two identical runs differ in."""
    files = {}
    for path in sorted((run / "results").rglob("*")):
        rel = str(path.relative_to(run))
        if not path.is_file() or rel == "results/report.html":
            continue
        data = path.read_bytes()
        if path.name == "manifest.json":
            meta = json.loads(data)
            for key in VOLATILE_MANIFEST_FIELDS:
                meta.pop(key)
            data = json.dumps(meta, sort_keys=True).encode()
        files[rel] = data
    return files


def processes_in(run: Path) -> list[int]:
    """Processes whose working folder is ``run`` (Snakemake changes into ``--directory``): Snakemake and its jobs."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == run:
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def kill_run(proc: subprocess.Popen, run: Path) -> None:
    """SIGKILL to Snakemake's process group, and to any job that left it (a machine that dies)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in processes_in(run):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while processes_in(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_in(run), "a killed job is still running"


def kill_and_resume(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """KILLS times: start the tiny workflow, SIGKILL everything at a random moment, ``--unlock``; then
    ``--rerun-incomplete`` to the end; returns the run folder (conftest.py's session fixture
    ``killed_and_resumed``, which tests/test_slurm.py computes while its cluster run waits on the queue).
    RSPO_KILL_SEED replays the kill times of a failed run; the seed is printed."""
    from test_workflow import make_workdir, smk, tiny_e2e_config

    seed = int(os.environ.get("RSPO_KILL_SEED", random.SystemRandom().randrange(2**32)))
    print(f"kill times drawn with RSPO_KILL_SEED={seed}")
    rng = random.Random(seed)
    run = make_workdir(tmp_path / "run", tiny_e2e_config(tiny_model_dir)).resolve()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--directory",
        str(run),
        "--cores",
        "2",
        "--rerun-incomplete",
    ]
    for kill in range(KILLS):
        delay = rng.uniform(2.0, 25.0)
        with open(tmp_path / f"kill{kill}.log", "w") as log:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # its own process group, Snakemake and jobs
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            kill_run(proc, run)
        print(f"kill {kill + 1}: after {delay:.1f} s{' (the run had finished)' if finished else ''}")
        if finished:
            break
        rc, out = smk(run, "--unlock")
        assert rc == 0, out
    rc, out = smk(run, "--cores", "2", "--rerun-incomplete", timeout=1800)
    assert rc == 0, out
    return run


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(killed_and_resumed, e2e):
    """Every artefact of the killed-and-resumed run equals the uninterrupted run's, byte for byte: no
    partial file was taken as complete, and the same seed gave the same bytes."""
    got, want = artefacts(killed_and_resumed), artefacts(e2e)
    assert sorted(got) == sorted(want)  # no file missing, no temporary or partial file left
    assert [name for name in want if got[name] != want[name]] == []


@pytest.mark.slow
def test_a_different_seed_changes_the_generations(e2e, tmp_path, tiny_model_dir):
    """Iteration 1's generation alone (a few seconds) with seed 1 instead of 0: same prompts, no sample
    the same as the seed-0 run's."""
    from test_workflow import make_workdir, smk, tiny_e2e_config

    config = tiny_e2e_config(tiny_model_dir)
    config["generation"]["sampling"]["seed"] = 1
    run = make_workdir(tmp_path / "run", config)
    rc, out = smk(run, "--cores", "2", "results/base/iter1/responses.jsonl")
    assert rc == 0, out
    new = read_table(run / "results" / "base" / "iter1" / "responses.jsonl", "responses")
    old = read_table(e2e / "results" / "base" / "iter1" / "responses.jsonl", "responses")
    assert [r["prompt"] for r in new] == [r["prompt"] for r in old]
    pairs = [
        (a, b)
        for n, o in zip(new, old, strict=True)
        for a, b in zip(n["token_ids"], o["token_ids"], strict=True)
    ]
    assert len(pairs) == 9 and all(a != b for a, b in pairs)


@pytest.mark.slow
def test_every_model_folder_and_results_carry_a_manifest(e2e):
    """Config, commit, package versions, the kernel settings the run used, and inputs with digests."""
    import torch
    import transformers
    from test_workflow import tiny_e2e_config

    res = e2e / "results"
    top = read_json(res / "manifest.json")
    assert top["config"]["reg"] == "mixed,forward_kl" and top["config"]["policy"] == str(
        read_json(res / "mixed" / "iter1" / "model" / "manifest.json")["inputs"]["model"]["path"]
    )
    inputs = top["inputs"]
    assert inputs["mixed/iter2/metrics"]["path"] == "results/mixed/eval/pi2/metrics.json"
    # the index, and per reg: pi_0..pi_2's metrics and self-BLEU, 2 train logs, 2 pairs_stats; pi_0's two
    # files and iteration 1's pairs_stats (results/base/iter1) are the same for both regs and listed once
    assert len(inputs) == 1 + 2 * (3 * 2 + 2 + 2) - 3
    for entry in inputs.values():
        assert entry["sha256"] == file_sha256(e2e / entry["path"])
    assert "resources" not in top["config"] and "cpu_isa" not in top["config"]  # they rerun nothing
    pinned = tiny_e2e_config(Path(top["config"]["policy"])).get("cpu_isa") == "avx2"
    for reg in ("mixed", "forward_kl"):
        for t in (1, 2):
            meta = read_json(res / reg / f"iter{t}" / "model" / "manifest.json")
            assert meta["packages"]["torch"] == torch.__version__
            assert meta["packages"]["transformers"] == transformers.__version__
            assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
            assert meta["config"]["regularizer"] == top["config"]["regularizers"][reg]
            assert meta["git_commit"] == top["git_commit"]
            assert meta["inputs"]["pairs"]["sha256"] == file_sha256(e2e / meta["inputs"]["pairs"]["path"])
            compute = meta["compute"]
            assert compute["torch_threads"] == 1 and compute["deterministic_algorithms"] is True
            if pinned:  # the config's cpu_isa reached torch in the job, before torch loaded
                assert compute["torch_cpu_capability"] == "AVX2"
                assert compute["env"]["MKL_CBWR"] == "AVX2" and compute["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_a_killed_writes_leftovers_are_removed_by_the_next_write(tmp_path):
    """kill -9 runs no ``finally``: the temporary file of a killed write stays. The next write of the same
    file removes it (and a killed conversion's folder); other files' temporaries are not touched."""
    from rspo.artifacts import write_text

    stale = tmp_path / ".pairs.jsonl.k1ll3d.tmp"
    stale.write_text("half a tab")
    stale_dir = tmp_path / ".pairs.jsonl.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("partial")
    other = tmp_path / ".responses.jsonl.k1ll3d.tmp"
    other.write_text("another output's write, maybe running")
    write_text(tmp_path / "pairs.jsonl", "complete\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".responses.jsonl.k1ll3d.tmp", "pairs.jsonl"]
