"""A full small evaluation through the CLI: generate -> eval-outputs -> annotate -> metrics ->
self-bleu -> summarize, with tiny random models (fast: the tiny reward-model judge; slow: the
embedded MiniLM judge)."""

from __future__ import annotations

import csv
import json

import pytest

from rspo.artifacts import read_json, write_json, write_table
from rspo.cli import main

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

pytest.importorskip("alpaca_eval")

PROMPTS = ["Why is the sky blue?", "List five fruits.", "Write a short poem about the sea."]


def _evaluate(tmp_path, models: dict, judge: dict) -> dict:
    """Evaluate each model (name -> folder) against the first one's outputs; returns the metrics per name."""
    prompts = tmp_path / "prompts.jsonl"
    write_table(prompts, [{"prompt_id": f"e{k}", "prompt": p} for k, p in enumerate(PROMPTS)], "prompts")
    gen = {"batch_size": 4, "sampling": {"n": 1, "max_new_tokens": 6, "seed": 0}}
    gen_sb = {"batch_size": 4, "sampling": {"n": 3, "max_new_tokens": 6, "seed": 1}}
    reference = None
    index = []
    for it, (name, model) in enumerate(models.items()):
        d = tmp_path / name
        for out, params in ((d / "responses.jsonl", gen), (d / "sb.jsonl", gen_sb)):
            cmd = ["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out)]
            assert main([*cmd, "--params", json.dumps(params), "--no-progress"]) == 0
        outputs = d / "model_outputs.json"
        assert main(["eval-outputs", "--responses", str(d / "responses.jsonl"), "--out", str(outputs),
                     "--generator", name]) == 0
        reference = reference or outputs
        ann = d / "annotations.json"
        args = ["annotate", "--outputs", str(outputs), "--reference", str(reference), "--out", str(ann),
                "--params", json.dumps(judge), "--seed", "3", "--no-progress"]
        assert main(args) == 0
        assert main(["metrics", str(ann), "--out", str(d / "metrics.json")]) == 0
        assert main(["self-bleu", "--responses", str(d / "sb.jsonl"), "--out", str(d / "selfbleu.json"),
                     "--no-progress"]) == 0
        index.append({"reg": "none", "iteration": it, "metrics": str(d / "metrics.json"),
                      "self_bleu": str(d / "selfbleu.json"), "train_log": None, "pairs_stats": None})
    write_json(tmp_path / "index.json", index)
    assert main(["summarize", "--index", str(tmp_path / "index.json"), "--out-dir", str(tmp_path / "results")]) == 0
    return {name: read_json(tmp_path / name / "metrics.json") for name in models}


def _check(tmp_path, metrics, judge_name):
    pi0, pi1 = metrics["pi0"], metrics["pi1"]
    # pi_0 against its own outputs: every pair identical -> 1.5 -> exactly 50 %
    assert pi0["win_rate"] == 50.0 and pi0["length_controlled_winrate"] == pytest.approx(50.0)
    assert pi1["n_total"] == 3 and pi1["generator"] == "pi1" and pi1["reference"] == "pi0"
    assert pi1["annotator"].startswith(judge_name)
    ann = read_json(tmp_path / "pi1" / "annotations.json")
    outputs = read_json(tmp_path / "pi1" / "model_outputs.json")
    assert [a["instruction"] for a in ann] == PROMPTS
    assert [a["output_2"] for a in ann] == [o["output"] for o in outputs]
    assert all(a["preference"] is None or 1 <= a["preference"] <= 2 for a in ann)
    assert any(a["preference"] != 1.5 for a in ann)  # the two random models differ: the judge was asked
    assert pi1["avg_length"] == int(sum(len(o["output"]) for o in outputs) / 3)
    rows = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert [r["iteration"] for r in rows] == ["0", "1"] and rows[1]["self_bleu"] != ""
    assert (tmp_path / "results" / "plots" / "winrate.png").exists()
    assert judge_name in (tmp_path / "results" / "paper_comparison.md").read_text()


def test_small_evaluation_with_a_reward_model_judge(
    tmp_path, monkeypatch, tiny_model_dir, tiny_model_dir_b, tiny_reward_model_dir
):
    judge = {"name": "reward_model", "model": str(tiny_reward_model_dir)}
    metrics = _evaluate(tmp_path, {"pi0": tiny_model_dir, "pi1": tiny_model_dir_b}, judge)
    _check(tmp_path, metrics, "reward_model")
    # a rerun is served from the annotation cache (beside --out): the judge is never asked
    from rspo.preference.reward_model import RewardModelJudge

    def no_call(*args, **kwargs):
        raise AssertionError("the judge was called on a cached rerun")

    monkeypatch.setattr(RewardModelJudge, "score", no_call)
    d = tmp_path / "pi1"
    args = ["annotate", "--outputs", str(d / "model_outputs.json"), "--reference",
            str(tmp_path / "pi0" / "model_outputs.json"), "--out", str(d / "again.json"),
            "--params", json.dumps(judge), "--seed", "3", "--no-progress"]
    assert main(args) == 0
    assert (d / "again.json").read_text() == (d / "annotations.json").read_text()


@pytest.mark.slow
def test_small_evaluation_with_the_embedded_judge(tmp_path, tiny_model_dir, tiny_model_dir_b):
    metrics = _evaluate(tmp_path, {"pi0": tiny_model_dir, "pi1": tiny_model_dir_b}, {"name": "embedded"})
    _check(tmp_path, metrics, "embedded")
