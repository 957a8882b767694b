"""benchmarks/gpu_check.py: the report of a ``--device cpu --smoke`` run, and the harness that wraps each part.

The smoke run (one subprocess, tiny shapes) checks the JSON's structure, that the parts needing vLLM
are skipped with the reason when vLLM is absent, and that the numbers are sane. The harness tests
run stub parts in-process: a part that raises, one failed on purpose with ``--fail``, one that runs
past its time and one that does not fit in the budget are recorded, and the parts after them run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
VLLM_PARTS = ("vllm_greedy", "vllm_n_vs_k", "workflow_vllm")
STATUSES = {"ok", "skipped", "error", "timeout"}


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load_module()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_smoke_report_structure(smoke, gpu_check):
    report, md = smoke
    assert report["schema"] == gpu_check.SCHEMA
    meta = report["meta"]
    assert (meta["mode"], meta["device"], meta["peak_bf16_tflops"]) == ("smoke", "cpu", None)
    assert meta["versions"]["torch"] and meta["hf_hub_offline"] == "1"
    names = [p.name for p in gpu_check.PARTS]
    assert list(report["parts"]) == names  # every part recorded, in order
    for name, entry in report["parts"].items():
        assert entry["status"] in STATUSES, name
        assert entry["seconds"] >= 0
        key = {"ok": "result", "skipped": "reason", "error": "error", "timeout": "error"}[entry["status"]]
        assert entry[key], name
    assert sum(report["summary"].values()) == len(names)
    assert 0 < sum(e["seconds"] for e in report["parts"].values()) <= report["total_s"]
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows[1:]] == names  # header, then one row per part
    assert all(f"| {e['status']} |" in r for r, e in zip(rows[1:], report["parts"].values()))
    assert all(r.count("|") == 5 for r in rows)  # four cells per row: no "|" leaks from a result


def test_smoke_vllm_parts_skipped_with_reason(smoke):
    report, _ = smoke
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    for name in VLLM_PARTS:
        entry = report["parts"][name]
        assert entry["status"] == "skipped" and "vllm is not installed" in entry["reason"], (name, entry)


def test_smoke_parts_without_vllm_ran(smoke):
    parts = smoke[0]["parts"]
    for name in (
        "train_step_smollm2",
        "train_step_mistral",
        "logps_chunking",
        "logps_precision",
        "pairrm",
        "generation",
    ):
        assert parts[name]["status"] == "ok", (name, parts[name])


def test_smoke_chunking(smoke):
    from rspo.config import TrainConfig

    r = smoke[0]["parts"]["logps_chunking"]["result"]
    assert r["chunk_size"] == TrainConfig().logps_chunk_size > 0
    assert finite_positive(r["peak_memory_ratio"]) and finite_positive(r["step_time_ratio"])
    assert math.isfinite(r["loss_abs_diff"])


@pytest.mark.parametrize("name", ["train_step_smollm2", "train_step_mistral"])
def test_smoke_train_step_numbers(smoke, name):
    r = smoke[0]["parts"][name]["result"]
    assert all(finite_positive(t) for t in r["step_s_all"]) and r["step_s"] == statistics.median(
        r["step_s_all"]
    )
    assert (
        r["tokens_per_step"] > 2 * r["pairs_per_step"] * r["prompt_tokens"]
    )  # prompts + responses of all rows
    assert math.isclose(r["tokens_per_s"], r["tokens_per_step"] / r["step_s"], rel_tol=1e-9)
    assert finite_positive(r["peak_memory_mib"]) and finite_positive(r["grad_norm"])
    assert math.isfinite(r["loss"]) and r["mfu"] is None  # no peak FLOPs for a CPU
    assert r["matmul_params"] <= r["params"]


def test_smoke_logps_precision(smoke):
    r = smoke[0]["parts"]["logps_precision"]["result"]
    for key in ("smollm2", "mistral"):
        v = r[key]
        # bf16 autocast really changes the numbers (> 0), on the same sequences and weights: a bf16 logit
        # is off by at most 2^-8 of its magnitude (a few units here), so a token's log-prob by < 0.1 nats
        assert 0 < v["max_abs_diff"] < v["mean_abs_logp_sum"], v
        assert 0 < v["max_abs_diff_per_token"] < 0.1, v
        assert finite_positive(v["fp32_s"]) and finite_positive(v["bf16_s"])


def test_smoke_pairrm_and_generation(smoke):
    parts = smoke[0]["parts"]
    pairrm = parts["pairrm"]["result"]
    assert set(pairrm["modes"]) == {"one-at-a-time", "batched 4"}
    for mode in pairrm["modes"].values():
        assert finite_positive(mode["pairs_per_s"])
        assert mode["max_abs_logit_diff"] < 1e-4  # fp32: padding changes nothing but float rounding
    gen = parts["generation"]["result"]
    for key in ("generation", "evaluation.generation"):
        g = gen[key]
        assert 0 < g["generated_tokens"] <= g["prompts"] * g["n"] * g["max_new_tokens"]
        assert math.isclose(g["tokens_per_s"], g["generated_tokens"] / g["seconds"], rel_tol=1e-9)


# --------------------------------------------------------------------------- the harness, with stub parts


def run_stubs(gpu_check, tmp_path, parts, budget_s=60.0, fail=None):
    argv = ["--out", str(tmp_path), "--device", "cpu", *(["--fail", fail] if fail else [])]
    ctx = gpu_check.Context(gpu_check.parse_args(argv), "cpu", True, time.monotonic() + budget_s)
    recorded = []
    out = gpu_check.run_parts(ctx, parts, lambda name, entry: recorded.append(name))
    assert recorded == list(out) == [p.name for p in parts]  # each recorded as soon as it ends
    return out


def test_a_failing_part_is_recorded_and_the_rest_runs(gpu_check, tmp_path):
    Part, ran = gpu_check.Part, []

    def broken(ctx):
        raise ValueError("deliberate")

    def skipped(ctx):
        raise gpu_check.Skip("needs something absent")

    def fine(ctx):
        ran.append(True)
        return {"x": 1}

    parts = [
        Part("broken", broken, 10, 0, ""),
        Part("injected", fine, 10, 0, ""),
        Part("skipped", skipped, 10, 0, ""),
        Part("fine", fine, 10, 0, ""),
    ]
    out = run_stubs(gpu_check, tmp_path, parts, fail="injected")
    assert out["broken"]["status"] == "error" and out["broken"]["error"] == "ValueError: deliberate"
    assert (
        out["injected"]["status"] == "error"
        and "injected failure (--fail injected)" in out["injected"]["error"]
    )
    assert out["skipped"] == {
        "status": "skipped",
        "reason": "needs something absent",
        "seconds": out["skipped"]["seconds"],
        "cpu_seconds": out["skipped"]["cpu_seconds"],
    }
    assert out["fine"]["status"] == "ok" and out["fine"]["result"] == {"x": 1}
    assert ran == [True]  # the injected part never ran its function; the last one did


def test_a_part_past_its_time_and_the_budget(gpu_check, tmp_path):
    Part = gpu_check.Part

    def slow(ctx):
        time.sleep(30)

    out = run_stubs(
        gpu_check, tmp_path, [Part("slow", slow, 1, 0, ""), Part("after", lambda ctx: {}, 10, 0, "")]
    )
    assert out["slow"]["status"] == "timeout" and out["slow"]["seconds"] < 10
    assert out["after"]["status"] == "ok"
    out = run_stubs(gpu_check, tmp_path, [Part("big", lambda ctx: {}, 10, 120, "")], budget_s=60)
    assert out["big"]["status"] == "skipped" and out["big"]["reason"].startswith("time budget")


# --------------------------------------------------------------------------- the vLLM child, on a fake vllm


def fake_vllm(greedy_ids):
    """A stand-in ``vllm`` module: greedy requests (temperature 0) of prompt i answer ``greedy_ids[i]``,
    sampled ones 5 tokens per sample; it records the engines started and the SamplingParams' n."""
    import types

    module = types.ModuleType("vllm")
    module.started, module.ns = [], []

    class SamplingParams:
        def __init__(self, **kw):
            self.n, self.temperature = kw["n"], kw["temperature"]
            module.ns.append(self.n)

    class LLM:
        def __init__(self, **kw):
            module.started.append(kw)

        def generate(self, requests, params, use_tqdm=True):
            def sample(i, j):
                ids = greedy_ids[i] if params.temperature == 0 else [5, 6, 7, 8, j]
                return types.SimpleNamespace(index=j, text="", token_ids=ids, finish_reason="length")

            return [types.SimpleNamespace(outputs=[sample(i, j) for j in range(params.n)])
                    for i in range(len(requests))]

    module.SamplingParams, module.LLM = SamplingParams, LLM
    return module


def test_vllm_child_compares_greedy_ids_and_shares_one_engine(gpu_check, tiny_model_dir, monkeypatch):
    from rspo.config import PromptSource, SamplingConfig
    from rspo.generation import generate
    from rspo.prompts import load_prompts

    base = gpu_check.workflow_config("config.yaml").generation
    greedy = dataclasses.replace(base, sampling=SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8))
    rows = generate(str(tiny_model_dir), load_prompts(PromptSource(embedded="eval", limit=2)), greedy, progress=False)
    ids = [r["token_ids"][0] for r in rows]
    assert len(ids[1]) > 3
    vllm_ids = [ids[0], ids[1][:3] + [ids[1][3] + 1] + ids[1][4:]]  # prompt 1 differs from its 4th token on
    module = fake_vllm(vllm_ids)
    monkeypatch.setitem(sys.modules, "vllm", module)

    payload = {"model": str(tiny_model_dir), "greedy_prompts": 2, "sample_prompts": 3, "max_new_tokens": 8}
    r = gpu_check.child_vllm(payload)
    assert (r["greedy"]["mismatches"], r["greedy"]["first_divergence_positions"]) == (1, [3])
    assert r["engines"] == len(module.started) == 1  # greedy and both samplings share the engine
    k = base.sampling.n
    one, passes = r["sampling"]["per_sample"], r["sampling"]["passes"]
    assert (one["generate_calls"], passes["generate_calls"]) == (1, k)
    assert module.ns == [1, k] + [1] * k  # greedy, one request with n=K, K requests with n=1
    assert one["generated_tokens"] == passes["generated_tokens"] == 3 * k * 5
