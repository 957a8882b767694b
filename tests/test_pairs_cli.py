"""``rspo pairs`` end to end on small hand-made tables; numbers worked out by hand (math.exp)."""

from __future__ import annotations

import json
import math

import pytest

from rspo.artifacts import read_table, write_table
from rspo.cli import main

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def response_row(pid: str, responses: list[str]) -> dict:
    k = len(responses)
    return {
        "prompt_id": pid,
        "prompt": f"prompt {pid}",
        "responses": responses,
        "num_tokens": [len(r.split()) for r in responses],
        "finish_reasons": ["stop"] * k,
        "generator": "tiny",
        "sampling": {"temperature": 0.7, "top_p": 0.9, "n": k},
    }


def bt_logits(r: list[float]) -> list[list[float]]:
    """M[i][j] = r_i - r_j, hence s_i = 2 (r_i - mean r)."""
    return [[ri - rj for rj in r] for ri in r]


@pytest.fixture
def tables(tmp_path):
    responses = [
        response_row("a", ["a0", "a1", "a2"]),
        response_row("b", ["b0", "b1", "b2"]),  # every candidate equal: no signal -> dropped
        response_row("c", ["c0", "c1", "c2", "c3"]),  # K = 4 on this prompt
    ]
    prefs = [  # written in another order than the responses: the join is by prompt_id
        {"prompt_id": "c", "judge": "toy", "logits": bt_logits([0.0, -1.0, 0.5, 0.25])},
        {"prompt_id": "a", "judge": "toy", "logits": [[0.0, 1.0, 2.0], [0.5, 0.0, -1.0], [0.0, 3.0, 0.0]]},
        {"prompt_id": "b", "judge": "toy", "logits": [[0.0, 0.7, 0.7], [0.7, 0.0, 0.7], [0.7, 0.7, 0.0]]},
    ]
    rpath, ppath = tmp_path / "responses.jsonl", tmp_path / "preferences.jsonl"
    write_table(rpath, responses, "responses")
    write_table(ppath, prefs, "preferences")
    return rpath, ppath


def test_pairs_end_to_end(tables, tmp_path):
    rpath, ppath = tables
    out, stats_path = tmp_path / "out" / "pairs.jsonl", tmp_path / "out" / "pairs_stats.json"
    rc = main(
        [
            "pairs",
            "--responses",
            str(rpath),
            "--preferences",
            str(ppath),
            "--out",
            str(out),
            "--stats",
            str(stats_path),
        ]
    )
    assert rc == 0
    rows = read_table(out, "pairs")
    assert [r["prompt_id"] for r in rows] == ["a", "c"]

    # prompt a: s = [2.5/3, -1.5, 2/3] (see tests/test_winrate.py) -> chosen 0, rejected 1
    s = [2.5 / 3, -1.5, 2 / 3]
    a = rows[0]
    assert (a["chosen"], a["rejected"], a["chosen_index"], a["rejected_index"]) == ("a0", "a1", 0, 1)
    assert a["p_chosen"] == pytest.approx((0.5 + sig(s[0] - s[1]) + sig(s[0] - s[2])) / 3, abs=1e-12)
    assert a["p_rejected"] == pytest.approx((sig(s[1] - s[0]) + 0.5 + sig(s[1] - s[2])) / 3, abs=1e-12)
    assert a["scores"] == pytest.approx(s, abs=1e-12)
    assert a["num_candidates"] == 3
    assert a["prompt"] == "prompt a"

    # prompt c: r = [0, -1, 0.5, 0.25], mean -1/16 -> s = 2 (r - mean) = [1/8, -15/8, 9/8, 5/8]
    s = [1 / 8, -15 / 8, 9 / 8, 5 / 8]
    c = rows[1]
    assert (c["chosen"], c["rejected"], c["num_candidates"]) == ("c2", "c1", 4)
    p_c = (sig(s[2] - s[0]) + sig(s[2] - s[1]) + 0.5 + sig(s[2] - s[3])) / 4
    p_r = (sig(s[1] - s[0]) + 0.5 + sig(s[1] - s[2]) + sig(s[1] - s[3])) / 4
    assert c["p_chosen"] == pytest.approx(p_c, abs=1e-12)
    assert c["p_rejected"] == pytest.approx(p_r, abs=1e-12)

    stats = json.loads(stats_path.read_text())
    assert stats["n_prompts"] == 3
    assert stats["n_pairs"] == 2
    assert stats["n_dropped_no_signal"] == 1
    assert stats["dropped_prompt_ids"] == ["b"]
    assert stats["judge"] == "toy"
    assert stats["mean_p_chosen"] == pytest.approx((a["p_chosen"] + p_c) / 2, abs=1e-12)
    assert stats["mean_p_rejected"] == pytest.approx((a["p_rejected"] + p_r) / 2, abs=1e-12)


def run_pairs(rpath, ppath, out):
    return main(["pairs", "--responses", str(rpath), "--preferences", str(ppath), "--out", str(out)])


def test_missing_prompt_id_names_file_and_prompt(tables, tmp_path, capsys):
    rpath, ppath = tables
    prefs = [r for r in read_table(ppath, "preferences") if r["prompt_id"] != "c"]
    write_table(ppath, prefs, "preferences")
    out = tmp_path / "pairs.jsonl"
    assert run_pairs(rpath, ppath, out) == 1
    err = capsys.readouterr().err
    assert str(ppath) in err and "'c'" in err
    assert not out.exists()  # nothing half-written


def test_extra_preference_row_is_an_error(tables, tmp_path, capsys):
    rpath, ppath = tables
    prefs = read_table(ppath, "preferences") + [
        {"prompt_id": "zz", "judge": "toy", "logits": bt_logits([0, 1])}
    ]
    write_table(ppath, prefs, "preferences")
    assert run_pairs(rpath, ppath, tmp_path / "pairs.jsonl") == 1
    assert "'zz'" in capsys.readouterr().err


def test_k_mismatch_names_file_and_prompt(tables, tmp_path, capsys):
    rpath, ppath = tables
    prefs = read_table(ppath, "preferences")
    prefs[1]["logits"] = bt_logits([0.0, 1.0])  # prompt a has 3 responses
    write_table(ppath, prefs, "preferences")
    assert run_pairs(rpath, ppath, tmp_path / "pairs.jsonl") == 1
    err = capsys.readouterr().err
    assert str(ppath) in err and "'a'" in err and "3 x 3" in err


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_non_finite_judge_output_drops_and_counts_the_prompt(tables, tmp_path, bad):
    """A null/NaN/inf preference: that prompt is dropped and counted, never trained on; the others
    give exactly the pairs they give without it."""
    rpath, ppath = tables
    prefs = read_table(ppath, "preferences")
    prefs[0]["logits"][0][1] = bad  # prompt c (json writes NaN/Infinity literals, null for None)
    write_table(ppath, prefs, "preferences")
    out, stats_path = tmp_path / "pairs.jsonl", tmp_path / "stats.json"
    rc = main(["pairs", "--responses", str(rpath), "--preferences", str(ppath), "--out", str(out),
               "--stats", str(stats_path)])
    assert rc == 0
    rows = read_table(out, "pairs")
    assert [r["prompt_id"] for r in rows] == ["a"]
    s = [2.5 / 3, -1.5, 2 / 3]  # prompt a, as in test_pairs_end_to_end
    assert rows[0]["scores"] == pytest.approx(s, abs=1e-12)
    stats = json.loads(stats_path.read_text())
    assert (stats["n_prompts"], stats["n_pairs"]) == (3, 1)
    assert (stats["n_dropped_no_signal"], stats["dropped_prompt_ids"]) == (1, ["b"])
    assert (stats["n_dropped_non_finite"], stats["dropped_non_finite_prompt_ids"]) == (1, ["c"])
    assert stats["mean_p_chosen"] == rows[0]["p_chosen"]


def test_non_finite_diagonal_is_ignored(tables, tmp_path):
    rpath, ppath = tables
    prefs = read_table(ppath, "preferences")
    prefs[0]["logits"][2][2] = math.nan  # prompt c: the diagonal is never read
    write_table(ppath, prefs, "preferences")
    out = tmp_path / "pairs.jsonl"
    assert run_pairs(rpath, ppath, out) == 0
    assert [r["prompt_id"] for r in read_table(out, "pairs")] == ["a", "c"]


def test_only_non_finite_prompts_is_an_error(tmp_path, capsys):
    rpath, ppath = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_table(rpath, [response_row("x", ["u", "v"])], "responses")
    write_table(ppath, [{"prompt_id": "x", "judge": "toy", "logits": [[0.0, math.nan], [1.0, 0.0]]}], "preferences")
    out = tmp_path / "pairs.jsonl"
    assert run_pairs(rpath, ppath, out) == 1
    err = capsys.readouterr().err
    assert "nothing to train on" in err and "1 dropped: non-finite" in err
    assert not out.exists()


def test_all_prompts_without_signal_is_an_error(tmp_path, capsys):
    rpath, ppath = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_table(rpath, [response_row("x", ["same", "same"])], "responses")
    write_table(
        ppath, [{"prompt_id": "x", "judge": "toy", "logits": [[0.0, 0.0], [0.0, 0.0]]}], "preferences"
    )
    out = tmp_path / "pairs.jsonl"
    assert run_pairs(rpath, ppath, out) == 1
    assert "no prompt" in capsys.readouterr().err
    assert not out.exists()


def test_help_lists_the_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pairs", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--responses", "--preferences", "--out", "--stats"):
        assert flag in text
