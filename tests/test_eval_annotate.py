"""rspo annotate: output-order randomisation undone, ties, caching, the alpaca_eval weighted protocol."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from rspo.config import JudgeConfig
from rspo.errors import RSPOError
from rspo.evaluation.annotate import annotate_pairs, is_switched, judge_p_second
from rspo.preference.cache import JudgeCache

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.


class LongerWins:
    """A fake rspo judge: M[i, j] = (len_i - len_j) / 2, so the longer candidate wins; counts its calls."""

    name = "longer-wins"
    cache_key = "longer-wins#test"

    def __init__(self):
        self.calls = []

    def compare_many(self, prompts, candidate_lists):
        self.calls.append([list(c) for c in candidate_lists])
        out = []
        for cands in candidate_lists:
            lens = np.array([len(c) for c in cands], dtype=float)
            out.append((lens[:, None] - lens[None, :]) / 2)
        return out


def _pairs(n=40, model_longer=True):
    pairs = []
    for k in range(n):
        short, long_ = "x" * 4, "y" * 12
        ref = {"instruction": f"instruction {k}", "output": short if model_longer else long_, "generator": "ref"}
        model = {"instruction": f"instruction {k}", "output": long_ if model_longer else short, "generator": "pi1"}
        pairs.append((ref, model))
    return pairs


@pytest.mark.parametrize("model_longer", [True, False])
def test_order_randomisation_is_undone(model_longer):
    judge = LongerWins()
    rows = annotate_pairs(_pairs(model_longer=model_longer), judge_p_second(judge), "longer-wins", progress=False)
    switched = [r["is_switched_outputs"] for r in rows]
    assert 5 < sum(switched) < 35  # both orders were shown
    # the judge saw the model output first exactly on the switched rows
    shown_first = [call[0] for batch in judge.calls for call in batch]
    model_outputs = [r["output_2"] for r in rows]
    assert [f == m for f, m in zip(shown_first, model_outputs)] == switched
    # |len difference| = 12 - 4 = 8 -> logit 8 / 2 = 4 for the longer output
    p_long = 1 / (1 + math.exp(-4.0))
    expected = 1 + p_long if model_longer else 2 - p_long
    assert all(r["preference"] == pytest.approx(expected) for r in rows)
    assert rows[0]["generator_1"] == "ref" and rows[0]["generator_2"] == "pi1" and rows[0]["annotator"] == "longer-wins"


def test_order_depends_on_seed_and_instruction_only():
    a = [is_switched(f"i{k}", 0) for k in range(200)]
    assert a == [is_switched(f"i{k}", 0) for k in range(200)]
    assert a != [is_switched(f"i{k}", 1) for k in range(200)]
    assert 70 < sum(a) < 130


def test_identical_outputs_are_ties_without_the_judge():
    judge = LongerWins()
    pairs = [({"instruction": "q", "output": "same"}, {"instruction": "q", "output": "same"})]
    rows = annotate_pairs(pairs, judge_p_second(judge), "j", progress=False)
    assert rows[0]["preference"] == 1.5 and judge.calls == []


def test_cache_makes_a_rerun_free(tmp_path):
    first, second = LongerWins(), LongerWins()
    cache = JudgeCache(tmp_path / "cache")
    rows1 = annotate_pairs(_pairs(10), judge_p_second(first), "j", judge_key="j#1", cache=cache, batch_size=4, progress=False)
    assert sum(len(b) for b in first.calls) == 10 and [len(b) for b in first.calls] == [4, 4, 2]
    rows2 = annotate_pairs(
        _pairs(10), judge_p_second(second), "j", judge_key="j#1", cache=JudgeCache(tmp_path / "cache"), progress=False
    )
    assert second.calls == [] and rows1 == rows2
    # another judge key is not served from the cache
    third = LongerWins()
    annotate_pairs(_pairs(10), judge_p_second(third), "j", judge_key="j#2", cache=cache, progress=False)
    assert sum(len(b) for b in third.calls) == 10


def test_nan_verdicts_are_null_and_retried(tmp_path):
    cache = JudgeCache(tmp_path)
    calls = []

    def no_verdict(triples):
        calls.append(len(triples))
        return [math.nan] * len(triples)

    rows = annotate_pairs(_pairs(3), no_verdict, "j", cache=cache, progress=False)
    assert [r["preference"] for r in rows] == [None, None, None]
    annotate_pairs(_pairs(3), no_verdict, "j", cache=cache, progress=False)
    assert calls == [3, 3]


# --------------------------------------------------------------------------- alpaca_eval weighted protocol


def _fake_openai(prompts, **kwargs):
    """OpenAI-shaped completions: P('m') = 0.9 if the output shown first (m) is longer, else 0.1."""
    out = []
    for prompt in prompts:
        first, second = re.findall(r'"output": """(.*?)"""', prompt, flags=re.S)
        p_m = 0.9 if len(first) > len(second) else 0.1
        top = [{"token": "m", "logprob": math.log(p_m)}, {"token": "M", "logprob": math.log(1 - p_m)}]
        out.append({"logprobs": {"content": [{"token": "m", "logprob": 0.0, "top_logprobs": top}]}, "text": "m"})
    return {"completions": ["m"] * len(out), "completions_all": out, "price_per_example": [0] * len(out)}


def test_alpaca_eval_weighted_protocol_with_a_fake_api():
    pytest.importorskip("alpaca_eval")
    from rspo.evaluation.alpaca_judges import AlpacaEvalWeightedJudge

    judge = AlpacaEvalWeightedJudge(JudgeConfig(name="alpaca_eval_gpt4_turbo"), fn_completions=_fake_openai)
    assert judge.name == "weighted_alpaca_eval_gpt4_turbo"
    assert judge.completions_kwargs["model_name"] == "gpt-4-1106-preview"
    prompt = judge.prompts([("Say hi", "hello", "hey there")])[0]
    assert '"instruction": """Say hi"""' in prompt and prompt.index("hello") < prompt.index("hey there")
    rows = annotate_pairs(_pairs(20), judge.p_second, judge.name, progress=False)
    # model longer: P(model wins) = 0.9 whichever order it was shown in
    assert all(r["preference"] == pytest.approx(1.9) for r in rows)
    assert 0 < sum(r["is_switched_outputs"] for r in rows) < 20


def test_unparsable_alpaca_eval_answer_is_nan():
    pytest.importorskip("alpaca_eval")
    from rspo.evaluation.alpaca_judges import AlpacaEvalWeightedJudge

    def no_letter(prompts, **kwargs):
        top = [{"token": " m", "logprob": -0.1}]
        return {"completions_all": [{"logprobs": {"content": [{"top_logprobs": top}]}} for _ in prompts]}

    judge = AlpacaEvalWeightedJudge(JudgeConfig(name="alpaca_eval_gpt4_turbo"), fn_completions=no_letter)
    assert math.isnan(judge.p_second([("q", "a", "b")])[0])


def test_official_judge_needs_a_key(monkeypatch):
    pytest.importorskip("alpaca_eval")
    from rspo.evaluation.alpaca_judges import AlpacaEvalWeightedJudge

    for var in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RSPOError, match="OPENAI_API_KEY"):
        AlpacaEvalWeightedJudge(JudgeConfig(name="alpaca_eval_gpt4_turbo"))


def test_local_vllm_judge_points_the_client_at_the_server(monkeypatch):
    pytest.importorskip("alpaca_eval")
    import yaml

    from rspo.evaluation.alpaca_judges import BASE_URL_ENV, AlpacaEvalWeightedJudge

    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(RSPOError, match=BASE_URL_ENV):
        AlpacaEvalWeightedJudge(JudgeConfig(name="alpaca_eval_vllm", model="llama-judge"))
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:8123/v1")
    judge = AlpacaEvalWeightedJudge(JudgeConfig(name="alpaca_eval_vllm", model="llama-judge"))
    kw = judge.completions_kwargs
    assert kw["model_name"] == "llama-judge" and kw["requires_chatml"] is True and kw["max_tokens"] == 1
    client = yaml.safe_load(open(kw["client_config_path"]))
    assert client == {"default": [{"api_key": "EMPTY", "base_url": "http://127.0.0.1:8123/v1"}]}
    assert judge.name == "weighted_alpaca_eval_vllm:llama-judge"


def test_cli_mismatch_names_the_file(tmp_path, capsys):
    from rspo.cli import main

    ref = tmp_path / "ref.json"
    out = tmp_path / "model_outputs.json"
    ref.write_text(json.dumps([{"instruction": "a", "output": "x"}]))
    out.write_text(json.dumps([{"instruction": "b", "output": "y"}]))
    code = main(["annotate", "--outputs", str(out), "--reference", str(ref), "--out", str(tmp_path / "a.json")])
    err = capsys.readouterr().err
    assert code == 1 and str(out) in err and str(ref) in err and len(err.strip().splitlines()) == 1
