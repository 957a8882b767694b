"""Training with two processes on CPU (DDP over gloo), started as the train rule starts it.

The command is :func:`rspo.launch.train_launch` with the shipped ``config/accelerate/ddp.yaml`` and
no GPU (``ACCELERATE_USE_CPU=true python -m accelerate.commands.launch --num_processes 2 ...
-m rspo --threads 2 train ...``), against the same training in one process. Four launches, planned
once by the module fixture (each starts two Python processes that import torch): the uninterrupted
run, a run whose processes are killed after step 5, its restart, and an FSDP run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rspo.artifacts import read_json, read_table, write_table  # noqa: E402
from rspo.config import TrainConfig  # noqa: E402
from rspo.launch import train_launch  # noqa: E402
from rspo.train import partial_dir, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "config" / "accelerate"
WORKER = ROOT / "tests" / "distributed_worker.py"

_TEXTS = [
    ("Give me three tips for staying healthy.", "Eat well, sleep enough and move every day.", "No."),
    ("What is the capital of France?", "The capital of France is Paris.", "It is Lyon, I think, or maybe Paris."),
    ("List five fruits.", "apple, banana, cherry, mango and pear", "apple"),
    ("Explain why the sky is blue.", "Sunlight scatters off air molecules.", "Because it is."),
    ("Write a short poem about the sea.", "The waves roll in, the gulls cry out.", "Sea sea sea sea."),
    ("How do I sort a list in Python?", "Use sorted(items) or items.sort().", "You cannot."),
]
PAIRS = [
    {"prompt_id": f"p{i}", "prompt": p, "chosen": c, "rejected": r, "chosen_index": 0, "rejected_index": 1,
     "p_chosen": 0.55 + 0.05 * i, "p_rejected": 0.45 - 0.05 * i, "scores": [1.0, -1.0]}
    for i, (p, c, r) in enumerate(_TEXTS)
]
# 6 pairs; 2 processes x 1 pair x 2 accumulation steps = global batch 4 -> 2 steps per epoch, 3 epochs
# = 6 optimizer steps; warm-up and a linear decay make every step's rate differ; checkpoints at 2, 4
TWO = dict(eta=10.0, regularizer={"reverse_kl": 0.5, "is_forward_kl": 0.1, "chi2": 0.1}, learning_rate=3e-5,
           lr_scheduler="linear", warmup_ratio=0.3, seed=3, per_device_batch_size=1, gradient_accumulation_steps=2,
           num_epochs=3, checkpoint_every=2, precision="fp32", num_processes=2,
           accelerate_config=str(ACCELERATE / "ddp.yaml"))
# the same global batch and data order in one process: 4 accumulated micro-batches of 1 pair
ONE = {**TWO, "gradient_accumulation_steps": 4, "num_processes": 1, "accelerate_config": None}
STEPS, KILL_AFTER = 6, 5


def _launch(entry: list[str], args: list[str], params: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """``<train rule's launch prefix> ENTRY --threads 2 ARGS`` through bash, as Snakemake runs it (2 CPU processes)."""
    prefix = train_launch(sys.executable, params["num_processes"], params["accelerate_config"], gpus=0)
    cmd = prefix + " " + shlex.join([*entry, "--threads", "2", *args, "--params", json.dumps(params)])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _train_args(pairs: Path, model: Path, out: Path) -> list[str]:
    return ["train", "--pairs", str(pairs), "--model", str(model), "--out", str(out / "model"),
            "--log", str(out / "train_log.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_model_dir_b):
    from rspo.commands.logps import cache_logps

    d = tmp_path_factory.mktemp("multiproc")
    pairs = d / "pairs_logps.jsonl"
    write_table(pairs, cache_logps(PAIRS, str(tiny_model_dir_b), str(tiny_model_dir), TrainConfig()), "pairs_logps")
    model = tiny_model_dir_b  # pi_t != mu: the regularizers are not trivial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels of one launched process (2 threads / 2 processes)
    try:
        train(TrainConfig(**ONE), pairs=pairs, model=str(model), out_dir=d / "one" / "model",
              log_path=d / "one" / "train_log.jsonl")
    finally:
        torch.set_num_threads(threads)

    out = {"dir": d, "pairs": pairs, "model": model}
    out["two"] = _launch(["-m", "rspo"], _train_args(pairs, model, d / "two"), TWO)
    out["killed"] = _launch([str(WORKER), str(KILL_AFTER)], _train_args(pairs, model, d / "resumed"), TWO)
    ckpt = partial_dir(d / "resumed" / "model")
    out["after_kill"] = {
        "checkpoint": sorted(p.name for p in (ckpt / "checkpoint").iterdir()) if (ckpt / "checkpoint").exists() else [],
        "state": json.loads((ckpt / "checkpoint" / "state.json").read_text()) if ckpt.exists() else None,
        "live_log": (ckpt / "train_log.jsonl").read_text().splitlines() if ckpt.exists() else [],
        "outputs": [p.name for p in (d / "resumed").iterdir()],
    }
    out["resumed"] = _launch(["-m", "rspo"], _train_args(pairs, model, d / "resumed"), TWO)
    fsdp = {**TWO, "accelerate_config": str(ACCELERATE / "fsdp.yaml"), "checkpoint_every": 0}
    out["fsdp"] = _launch(["-m", "rspo"], _train_args(pairs, model, d / "fsdp"), fsdp)
    return out


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_processes_end_at_the_weights_of_one_process(runs):
    _ok(runs["two"])
    d = runs["dir"]
    one, two, start = _weights(d / "one" / "model"), _weights(d / "two" / "model"), _weights(runs["model"])
    assert one.keys() == two.keys()
    # Each process computes the same micro-batches as the single process (test_launch pins the
    # plan); DDP averages the processes' accumulated gradients, so an element's gradient is the same
    # mean of 4 float32 terms summed in another order ((g0 + g2) + (g1 + g3) instead of
    # ((g0 + g1) + g2) + g3; the 1/2 and 1/4 scalings are exact). RMSProp turns a last-bit change of
    # the gradient into a last-bit change of the update, so each of the STEPS updates may round the
    # weight differently: at most one float32 step of the largest weight per optimizer step.
    scale = max(t.abs().max().item() for t in one.values())
    tol = STEPS * torch.finfo(torch.float32).eps * scale
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert diff <= tol, (diff, tol)
    # training moved the weights far beyond the tolerance; a wrong data split would change RMSProp's
    # updates by O(10 x learning rate) = 3e-4 per step (a wrong loss scale shows in the norm below)
    assert moved > 10 * tol

    a = read_table(d / "one" / "train_log.jsonl", "train_log")
    b = read_table(d / "two" / "train_log.jsonl", "train_log")
    assert [(r["step"], r["epoch"], r["lr"]) for r in a] == [(r["step"], r["epoch"], r["lr"]) for r in b]
    # step 1 starts from the same weights: each micro-batch's metrics are bit-identical and only
    # their float64 mean is summed in another order (relative error ~1e-16)
    for key in ("loss", "sppo", "reverse_kl", "is_forward_kl", "chi2", "a_chosen", "d_rejected"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-12, abs=1e-12), key
    # its gradient norm: the reordered float32 sum above, a few float32 steps relative to the norm
    # (1e-5 allows micro-batch gradients up to ~20x larger than their mean); a loss not averaged
    # over the processes or the micro-batches would be off by a factor 2
    assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-5)


def test_the_main_process_writes_the_log_the_model_and_the_manifest_once(runs):
    _ok(runs["two"])
    d = runs["dir"] / "two"
    log = read_table(d / "train_log.jsonl", "train_log")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))  # one row per step, not one per process
    meta = read_json(d / "model" / "manifest.json")
    assert meta["num_processes"] == 2 and meta["steps"] == STEPS and meta["resumed_from"] is None
    assert meta["config"]["num_processes"] == 2
    assert meta["inputs"]["accelerate_config"]["sha256"] is not None  # the launch config is provenance
    assert not partial_dir(d / "model").exists() and not list(d.glob(".*"))  # no temporary folder left
    # the progress log comes from the main process only
    text = runs["two"].stdout + runs["two"].stderr
    assert text.count("INFO rspo.train: training 6 pairs") == 1, text[-3000:]


def test_kill_and_resume_of_two_processes_reaches_the_uninterrupted_weights(runs):
    _ok(runs["two"])
    killed, after = runs["killed"], runs["after_kill"]
    assert killed.returncode != 0
    assert after["outputs"] == ["model.partial"]  # neither the model nor the log was written
    assert after["state"]["step"] == 4  # the last checkpoint before the kill after step 5
    # model, optimizer and scheduler state written once (by the main process), one RNG state per process
    assert after["checkpoint"] == ["custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin",
                                   "random_states_0.pkl", "random_states_1.pkl", "state.json"]
    assert [json.loads(line)["step"] for line in after["live_log"]] == [1, 2, 3, 4, 5]  # written once

    resumed = runs["resumed"]
    _ok(resumed)
    assert "resuming from" in resumed.stdout + resumed.stderr
    d = runs["dir"]
    # Every process loads the checkpoint: a process that kept its start weights or optimizer state
    # would change the averaged gradients of steps 5 and 6. Same processes, same order of every
    # sum: bit-identical.
    a, b = _weights(d / "two" / "model"), _weights(d / "resumed" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_table(d / "resumed" / "train_log.jsonl", "train_log") == read_table(
        d / "two" / "train_log.jsonl", "train_log")
    assert read_json(d / "resumed" / "model" / "manifest.json")["resumed_from"] == 4
    assert not partial_dir(d / "resumed" / "model").exists()


def test_fsdp_with_two_processes_on_cpu(runs):
    proc = runs["fsdp"]
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 and "asks for FSDP, but accelerate runs MULTI_CPU here" in text:
        # the one-line error of rspo train (rather than a silent DDP run)
        assert "rspo train: error: the accelerate config asks for FSDP" in text
        import accelerate

        pytest.skip(f"accelerate {accelerate.__version__} enables FSDP on GPUs only (several CPU processes run as "
                    "plain DDP), although torch's FSDP2 fully_shard itself runs on CPU with gloo; rspo train "
                    "refuses it with a one-line error, checked here")
    _ok(proc)
    d = runs["dir"]
    one, fsdp = _weights(d / "one" / "model"), _weights(d / "fsdp" / "model")
    # FSDP reduce-scatters the same 4-term gradient means as DDP: the tolerance of the DDP test
    tol = STEPS * torch.finfo(torch.float32).eps * max(t.abs().max().item() for t in one.values())
    assert max((one[k] - fsdp[k]).abs().max().item() for k in one) <= tol
