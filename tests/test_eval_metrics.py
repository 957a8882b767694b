"""rspo metrics: parity with the AlpacaEval 2.0 leaderboard, the LC variants, and the error paths."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("alpaca_eval")

from rspo.evaluation import metrics as M  # noqa: E402

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

# the leaderboard CSV shipped in alpaca-eval 0.6.6 (also in ../shared/data/alpaca_eval/README.md):
# win_rate, standard_error, n_total, avg_length, length_controlled_winrate
LEADERBOARD = {
    "alpaca-7b": (2.591450540223603, 0.4870855382635108, 805, 396, 5.875487163278986),
    "gpt-3.5-turbo-1106": (9.177964561962735, 0.8904117511864436, 805, 796, 19.30058903498905),
    "claude-2.1": (15.733506736409938, 1.120315865445773, 805, 1096, 25.251943886133027),
    "gemma-7b-it": (6.937294379677018, 0.7869665731853178, 805, 1115, 10.425760403690134),
}


@pytest.mark.parametrize("model", sorted(LEADERBOARD))
def test_parity_with_leaderboard(alpaca_eval_dir, model):
    win_rate, se, n_total, avg_length, lc = LEADERBOARD[model]
    rows = M.load_annotations(alpaca_eval_dir / "annotations" / f"{model}.json")
    m = M.compute_metrics(rows)
    # exact up to float summation order (the leaderboard's gpt-3.5 value differs in the 16th digit)
    assert m["win_rate"] == pytest.approx(win_rate, rel=0, abs=1e-12)
    assert m["standard_error"] == pytest.approx(se, rel=0, abs=1e-12)
    assert m["n_total"] == n_total
    assert m["avg_length"] == avg_length
    assert m["lc_method"] == M.APPROX_FIXED_SLOPE
    # the offline approximation's measured error is at most 3.26 points on these models (docs/evaluation.md)
    assert abs(m["length_controlled_winrate"] - lc) < 3.5
    assert m["generator"] == model and m["reference"] == "gpt4_1106_preview"
    assert m["annotator"] == "weighted_alpaca_eval_gpt4_turbo"


def _rows(pref, out1, out2, g1="ref", g2="model"):
    return [
        {"instruction": f"i{k}", "output_1": a, "output_2": b, "generator_1": g1, "generator_2": g2, "preference": p}
        for k, (p, a, b) in enumerate(zip(pref, out1, out2))
    ]


def test_raw_win_rate_by_hand():
    # preferences 2, 1, 1.5 (tie), 0 (legacy tie), 1.75 -> y = 1, 0, .5, .5, .75
    rows = _rows([2, 1, 1.5, 0, 1.75], ["aa"] * 5, ["a", "bbb", "cc", "dddd", "e"])
    m = M.compute_metrics(rows)
    y = np.array([1, 0, 0.5, 0.5, 0.75])
    assert m["win_rate"] == pytest.approx(100 * y.mean())
    assert m["standard_error"] == pytest.approx(100 * y.std(ddof=1) / math.sqrt(5))
    assert (m["n_total"], m["n_wins"], m["n_wins_base"], m["n_draws"]) == (5, 2, 1, 2)
    assert m["avg_length"] == int((1 + 3 + 2 + 4 + 1) / 5)


def test_null_and_out_of_range_preferences_are_dropped():
    rows = _rows([2, None, -1, 1], ["x"] * 4, ["y"] * 4)
    m = M.compute_metrics(rows)
    assert m["n_total"] == 2 and m["win_rate"] == pytest.approx(50.0)


def test_fixed_slope_equal_lengths_is_the_mean_preference():
    # equal lengths: tanh(0) = 0, so sigmoid(theta) = mean(y) = (1 + 0 + 0 + .5) / 4 = 0.375
    pref = np.array([2.0, 1.0, 1.0, 1.5])
    lc, se = M.fixed_slope_lc(pref, np.full(4, 10), np.full(4, 10))
    # brentq's xtol 1e-12 on theta moves 100 sigmoid(theta) by <= 25 * 1e-12; 1e-8 is far above that
    assert lc == pytest.approx(37.5, abs=1e-8)
    # sandwich SE of theta, mapped through sigmoid: sqrt(sum (y - ybar)^2) / n
    y = pref - 1
    assert se == pytest.approx(100 * math.sqrt(((y - 0.375) ** 2).sum()) / 4, abs=1e-8)


def test_fixed_slope_preferences_explained_by_length_give_50():
    # if P(model wins) = sigmoid(PHI0 * tanh(delta / sd)) exactly, the equal-length win rate is 50 %
    len_ref = np.array([100, 200, 300, 400, 500, 50])
    len_model = np.array([300, 200, 100, 100, 900, 60])
    delta = len_ref - len_model
    y = 1 / (1 + np.exp(-M.FIXED_LENGTH_SLOPE * np.tanh(delta / delta.std(ddof=1))))
    lc, _ = M.fixed_slope_lc(1 + y, len_ref, len_model)
    assert lc == pytest.approx(50.0, abs=1e-6)  # brentq (xtol 1e-12) on float64 sums: far below 1e-6


def test_fixed_slope_shorter_model_gains():
    # same preferences, a shorter model: the length term explains part of its losses -> LC > raw WR
    rng = np.random.default_rng(0)
    pref = 1 + rng.uniform(0, 0.4, size=50)
    len_ref = rng.integers(800, 1200, size=50)
    lc, _ = M.fixed_slope_lc(pref, len_ref, len_ref // 2)
    assert lc > 100 * (pref - 1).mean()


def _synthetic_df_gamed(path, n, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    gamma = rng.normal(0, 1, size=n)
    gamed = []
    for model in ("verbose", "concise"):
        gamed.append(
            pd.DataFrame(
                {
                    "model": model,
                    "index": range(n),
                    "preference": rng.uniform(0, 1, size=n),
                    "std_delta_len": rng.normal(0, 1, size=n),
                    "instruction_difficulty": gamma,
                    "not_gamed_baseline": False,
                }
            )
        )
    pd.concat(gamed).to_csv(path, index=False)


def test_official_lc_goes_through_alpaca_eval_with_the_local_file(tmp_path):
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    n = 60
    rng = np.random.default_rng(1)
    rows = _rows(
        list(1 + rng.uniform(0, 1, size=n)),
        ["r" * int(k) for k in rng.integers(10, 200, size=n)],
        ["m" * int(k) for k in rng.integers(10, 200, size=n)],
    )
    df_gamed = tmp_path / "df_gamed.csv"
    _synthetic_df_gamed(df_gamed, n)
    original = glm_winrate.hf_hub_download
    m = M.compute_metrics(rows, df_gamed=df_gamed)
    assert m["lc_method"] == M.OFFICIAL_LC
    assert glm_winrate.hf_hub_download is original  # the patch is undone
    # the same call made directly on alpaca_eval (download pointed at the same file)
    glm_winrate.hf_hub_download = lambda *a, **k: str(df_gamed)
    try:
        ref = glm_winrate.get_length_controlled_winrate(
            pd.DataFrame(rows), glm_name="length_controlled_v1", save_weights_dir=None
        )
    finally:
        glm_winrate.hf_hub_download = original
    # the same GLM fit of alpaca_eval on the same float64 data: only the order of operations may differ
    assert m["length_controlled_winrate"] == pytest.approx(ref["length_controlled_winrate"], abs=1e-9)
    assert m["lc_standard_error"] == pytest.approx(ref["lc_standard_error"], abs=1e-9)


def test_minimal_variant_runs_offline():
    rng = np.random.default_rng(2)
    n = 40
    rows = _rows(
        list(1 + rng.uniform(0, 1, size=n)),
        ["r" * int(k) for k in rng.integers(10, 200, size=n)],
        ["m" * int(k) for k in rng.integers(10, 200, size=n)],
    )
    m = M.compute_metrics(rows, lc_method=M.APPROX_MINIMAL)
    assert m["lc_method"] == M.APPROX_MINIMAL and 0 < m["length_controlled_winrate"] < 100


# --------------------------------------------------------------------------- CLI error paths


def _run_metrics(*args):
    return subprocess.run(
        [sys.executable, "-m", "rspo", "metrics", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_prints_one_json_object(tmp_path, capsys):
    from rspo.cli import main

    f = tmp_path / "ann.json"
    f.write_text(json.dumps(_rows([2, 1, 1.5, 2], ["aa"] * 4, ["b", "bbb", "cc", "d"])))
    out = tmp_path / "m.json"
    assert main(["metrics", str(f), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert set(printed) >= {
        "win_rate", "standard_error", "n_total", "avg_length", "length_controlled_winrate", "lc_standard_error",
        "lc_method",
    }
    assert printed["win_rate"] == pytest.approx(62.5)


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "file not found"),
        ("{not json", "not valid JSON"),
        ('{"preference": 2}', "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"preference": 2, "output_1": "a", "output_2": "b", "generator_1": "r"}]', "generator_2"),
        ('[{"preference": "x", "output_1": "a", "output_2": "b", "generator_1": "r", "generator_2": "m"}]',
         "'preference'"),
        (json.dumps(_rows([2, 1], ["a", "b"], ["c", "d"], g2="m") + _rows([2], ["a"], ["c"], g2="other")),
         "one model per file"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, content, needle):
    f = tmp_path / "annotations.json"
    if content is not None:
        f.write_text(content)
    _assert_one_line_error(_run_metrics(f, "--json"), str(f), needle)


def test_cli_bad_df_gamed(tmp_path):
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps(_rows([2, 1], ["a", "b"], ["c", "d"])))
    bad = tmp_path / "df_gamed.csv"
    bad.write_text("index,preference\n0,0.5\n")
    _assert_one_line_error(_run_metrics(f, "--json", "--df-gamed", bad), str(bad), "instruction_difficulty")
    good = tmp_path / "df_gamed_ok.csv"
    _synthetic_df_gamed(good, 805)
    # 2 annotations cannot be the 805 canonical AlpacaEval rows
    _assert_one_line_error(_run_metrics(f, "--json", "--df-gamed", good), str(f), "805")


def test_missing_alpaca_eval_is_a_clear_error(monkeypatch):
    from rspo.errors import RSPOError

    for name in [m for m in sys.modules if m == "alpaca_eval" or m.startswith("alpaca_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # makes `import alpaca_eval` raise ImportError
    with pytest.raises(RSPOError, match="pip install 'alpaca-eval==0.6.6'"):
        M.compute_metrics(_rows([2], ["a"], ["b"]))
