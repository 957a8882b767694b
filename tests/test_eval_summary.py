"""rspo summarize: summary.csv / summary.md / plots/winrate.png / paper_comparison.md."""

from __future__ import annotations

import csv
import json

import pytest

from rspo.artifacts import ArtifactError, write_json, write_table
from rspo.cli import main
from rspo.evaluation.summary import collect, load_paper_results

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


def _metrics(lc, wr, length, judge="embedded"):
    return {
        "win_rate": wr, "standard_error": 1.0, "n_total": 20, "avg_length": length,
        "length_controlled_winrate": lc, "lc_standard_error": 2.0, "lc_method": "approx_fixed_length_slope",
        "generator": "pi", "reference": "pi0", "annotator": judge,
    }


@pytest.fixture
def index(tmp_path):
    entries = []
    values = {  # (reg, it) -> (lc, wr, len)
        ("none", 0): (50.0, 50.0, 400), ("none", 1): (55.0, 57.0, 450), ("none", 2): (58.0, 61.0, 520),
        ("mixed", 0): (50.0, 50.0, 400), ("mixed", 1): (54.0, 55.0, 420), ("mixed", 2): (60.0, 62.0, 470),
    }
    for (reg, it), (lc, wr, length) in values.items():
        d = tmp_path / reg / f"pi{it}"
        write_json(d / "metrics.json", _metrics(lc, wr, length))
        write_json(d / "selfbleu.json", {"self_bleu": 0.3 + 0.1 * it, "n": 4, "num_instructions": 5})
        entry = {"reg": reg, "iteration": it, "metrics": str(d / "metrics.json"),
                 "self_bleu": str(d / "selfbleu.json"), "train_log": None, "pairs_stats": None}
        if it > 0:
            log_rows = [{"step": s, "loss": float(10 - s), "lr": 1e-6, "sppo": float(5 - s)} for s in range(1, 4)]
            if reg == "mixed":
                for r in log_rows:
                    r["reverse_kl"], r["is_forward_kl"] = 0.5 * r["step"], 2.0
            write_table(d / "train_log.jsonl", log_rows, "train_log")
            write_json(d / "pairs_stats.json", {"n_prompts": 8, "n_pairs": 7, "n_dropped_no_signal": 1,
                                                "mean_p_chosen": 0.7, "mean_p_rejected": 0.3, "judge": "embedded"})
            entry.update(train_log=str(d / "train_log.jsonl"), pairs_stats=str(d / "pairs_stats.json"))
        entries.append(entry)
    entries.reverse()  # the summary sorts by (first appearance of reg, iteration)
    f = tmp_path / "index.json"
    write_json(f, entries)
    return f


def test_summarize_writes_all_outputs(index, tmp_path):
    out = tmp_path / "results"
    assert main(["summarize", "--index", str(index), "--out-dir", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["reg"], r["iteration"]) for r in rows] == [
        ("mixed", "0"), ("mixed", "1"), ("mixed", "2"), ("none", "0"), ("none", "1"), ("none", "2")
    ]
    r = rows[2]  # mixed, iteration 2
    assert float(r["lc_win_rate"]) == 60.0 and float(r["win_rate"]) == 62.0 and r["avg_length"] == "470"
    assert float(r["self_bleu"]) == pytest.approx(0.5) and r["judge"] == "embedded" and r["n"] == "20"
    assert r["train_steps"] == "3" and float(r["train_loss_final"]) == 7.0 and float(r["train_loss_mean"]) == 8.0
    assert float(r["train_sppo_mean"]) == 3.0  # mean of 4, 3, 2
    assert float(r["train_reverse_kl_mean"]) == 1.0 and float(r["train_is_forward_kl_mean"]) == 2.0
    assert r["pairs_n"] == "7" and float(r["pairs_mean_p_chosen"]) == 0.7
    assert rows[0]["train_steps"] == "" and rows[4]["train_reverse_kl_mean"] == ""

    md = (out / "summary.md").read_text()
    assert "| regularizer | LC WR it0 | LC WR it1 | LC WR it2 | WR it0 | WR it1 | WR it2 | len it0 |" in md
    assert "| mixed | 50.00 | 54.00 | 60.00 | 50.00 | 55.00 | 62.00 | 400 | 420 | 470 |" in md
    assert "embedded" in md and "approx_fixed_length_slope" in md

    png = (out / "plots" / "winrate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    cmp_md = (out / "paper_comparison.md").read_text()
    assert "judge **embedded**" in cmp_md and "not comparable" in cmp_md
    assert "| RSPO IS-For.+Rev. (0.1, x5) | paper | 17.11 | 23.16 | 27.91 | 35.44 |" in cmp_md
    assert "| RSPO IS-For.+Rev. (0.1, x5) [reg `mixed`] | ours | 50.00 | 54.00 | 60.00 | – |" in cmp_md
    assert "| SPPO (re-run) [reg `none`] | ours |" in cmp_md


def test_paper_results_match_the_digest():
    paper = load_paper_results()
    by_reg = {m["reg"]: m for m in paper["methods"]}
    assert set(by_reg) == {"none", "reverse_kl", "forward_kl", "chi2", "is_forward_kl", "mixed"}
    assert by_reg["mixed"]["lc_win_rate"] == [23.16, 27.91, 35.44]
    assert by_reg["none"]["win_rate"] == [24.04, 27.43, 29.75]
    assert by_reg["reverse_kl"]["avg_length"] == [1787, 2001, 2295]
    assert paper["iteration_0"] == {"lc_win_rate": 17.11, "win_rate": 14.72, "avg_length": 1676}


def test_index_errors(tmp_path, index):
    entries = json.loads(index.read_text())
    with pytest.raises(ArtifactError, match="appears twice"):
        collect(entries + entries[:1])
    with pytest.raises(ArtifactError, match="non-empty"):
        collect([])
    bad = tmp_path / "m.json"
    write_json(bad, {"win_rate": 1.0})
    with pytest.raises(ArtifactError, match="length_controlled_winrate"):
        collect([{"reg": "x", "iteration": 0, "metrics": str(bad)}])


def test_llama3_run_is_compared_with_the_papers_llama3_numbers(index, tmp_path):
    """The paper's second model: SPPO 38.77 -> RSPO 43.66 LC at iteration 3 (other iterations not reported)."""
    llama = load_paper_results("meta-llama/Meta-Llama-3-8B-Instruct@0123abc")  # a pinned revision is ignored
    assert llama["base_model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert llama["iteration_0"] == {"lc_win_rate": 22.92, "win_rate": 22.57, "avg_length": 1899}
    by_reg = {m["reg"]: m for m in llama["methods"]}
    assert by_reg["none"]["lc_win_rate"] == [31.73, 35.15, 38.77] and by_reg["none"]["win_rate"][-1] == 39.85
    assert by_reg["is_forward_kl"]["lc_win_rate"] == [None, None, 43.66]
    # any other policy (the embedded default) is compared with the Mistral table, as before
    assert load_paper_results("resources/models/smollm2-135m-instruct")["base_model"].startswith("mistralai/")

    out = tmp_path / "results"
    assert main(["summarize", "--index", str(index), "--out-dir", str(out), "--policy",
                 "meta-llama/Meta-Llama-3-8B-Instruct"]) == 0
    cmp_md = (out / "paper_comparison.md").read_text()
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in cmp_md
    assert "| SPPO (official checkpoints) | paper | 22.92 | 31.73 | 35.15 | 38.77 |" in cmp_md
    rspo_line = next(line for line in cmp_md.splitlines() if line.startswith("| RSPO (regularizer not stated"))
    assert "| paper | 22.92 | – | – | 43.66 |" in rspo_line and rspo_line.endswith("| 20.74 |")  # 43.66 - 22.92
    assert "| SPPO (official checkpoints) [reg `none`] | ours | 50.00 | 55.00 | 58.00 | – |" in cmp_md
