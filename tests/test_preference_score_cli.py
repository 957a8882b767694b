"""``rspo score``: responses table -> preferences table, for any judge, with the cache."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
from conftest import reward_tol

from rspo.artifacts import read_table, write_table
from rspo.cli import main
from rspo.config import JudgeConfig
from rspo.preference import get_judge

ROWS = [
    ("p1", "Give me three tips for staying healthy.", ["Eat well and sleep.", "Sleep.", "Paris is in France."]),
    ("p2", "What is 2 + 2?", ["4", "Four.", "It is 5.", "2 + 2 = 4."]),
]


def _responses(path, rows=ROWS):
    write_table(path, [
        {"prompt_id": pid, "prompt": p, "responses": c, "num_tokens": [1] * len(c),
         "finish_reasons": ["stop"] * len(c), "generator": "test", "sampling": {"n": len(c)}}
        for pid, p, c in rows
    ], "responses")


def test_score_writes_one_matrix_per_prompt_and_reuses_the_cache(tiny_reward_model_dir, tmp_path):
    _responses(tmp_path / "responses.jsonl")
    cache = tmp_path / "cache"
    params = json.dumps({"name": "reward_model", "model": str(tiny_reward_model_dir), "cache_dir": str(cache)})
    out = tmp_path / "preferences.jsonl"
    assert main(["score", "--responses", str(tmp_path / "responses.jsonl"), "--out", str(out), "--params", params]) == 0
    rows = read_table(out, "preferences")
    judge = get_judge(JudgeConfig(name="reward_model", model=str(tiny_reward_model_dir)))
    assert [r["prompt_id"] for r in rows] == ["p1", "p2"]
    assert [r["K"] for r in rows] == [3, 4]
    for row, (_, prompt, cands) in zip(rows, ROWS):
        assert row["judge"] == judge.name
        # other batches of the same float32 model: a difference of two rewards, each within reward_tol
        np.testing.assert_allclose(np.array(row["logits"]), judge.compare(prompt, cands), rtol=0,
                                   atol=2 * reward_tol(tiny_reward_model_dir))

    # a rescoring reads every judgement from the cache: same output, no new cache rows
    with sqlite3.connect(cache / "judgements.sqlite") as conn:
        before = conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    assert before == 7  # one reward per distinct (prompt, response)
    out2 = tmp_path / "again.jsonl"
    assert main(["score", "--responses", str(tmp_path / "responses.jsonl"), "--out", str(out2), "--params", params]) == 0
    assert read_table(out2, "preferences") == rows
    with sqlite3.connect(cache / "judgements.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == before


def test_score_errors(tmp_path, capsys):
    _responses(tmp_path / "dup.jsonl", ROWS + [ROWS[0]])
    out = tmp_path / "p.jsonl"
    assert main(["score", "--responses", str(tmp_path / "dup.jsonl"), "--out", str(out)]) == 1
    assert "appears twice" in capsys.readouterr().err
    _responses(tmp_path / "ok.jsonl")
    assert main(["score", "--responses", str(tmp_path / "ok.jsonl"), "--out", str(out),
                 "--params", '{"name": "gpt5"}']) == 1
    assert "unknown judge" in capsys.readouterr().err
    assert not out.exists()


def test_default_judge_is_the_embedded_one():
    judge = get_judge(JudgeConfig())
    assert judge.name == "embedded-minilm-v2"
    assert judge.scale == 5.0  # JudgeConfig.beta


MISTRAL_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def test_prompt_form_sets_the_text_the_judge_reads(tmp_path, monkeypatch, tiny_tokenizer_dir, capsys):
    """judge.prompt_form: raw = the instruction; chat = the generator's chat template around it (the
    authors' rank.py gives PairRM `<s>[INST] {prompt} [/INST]` for Mistral); --chat-model overrides."""
    from transformers import AutoTokenizer

    import rspo.preference
    from rspo.preference import ScalarJudge

    mistral_like = tmp_path / "mistral_like"
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = MISTRAL_LIKE_TEMPLATE
    tok.bos_token = "<s>"
    tok.save_pretrained(mistral_like)

    seen: list[str] = []

    class Recorder(ScalarJudge):
        name = "recorder"

        def score(self, prompts, responses):
            seen.extend(prompts)
            return np.zeros(len(prompts))

    monkeypatch.setattr(rspo.preference, "get_judge", lambda cfg: Recorder(cfg))
    responses = tmp_path / "responses.jsonl"
    write_table(responses, [
        {"prompt_id": pid, "prompt": p, "responses": c, "num_tokens": [1] * len(c),
         "finish_reasons": ["stop"] * len(c), "generator": str(mistral_like), "sampling": {"n": len(c)}}
        for pid, p, c in ROWS
    ], "responses")

    def score(*extra):
        seen.clear()
        assert main(["score", "--responses", str(responses), "--out", str(tmp_path / "p.jsonl"), *extra]) == 0
        return sorted(set(seen))

    assert score("--params", '{"prompt_form": "raw"}') == sorted(p for _, p, _ in ROWS)
    assert score("--params", '{"prompt_form": "chat"}') == sorted(f"<s>[INST] {p} [/INST]" for _, p, _ in ROWS)
    assert score("--params", '{"prompt_form": "chat"}', "--chat-model", str(tiny_tokenizer_dir)) == sorted(
        f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for _, p, _ in ROWS)

    assert main(["score", "--responses", str(responses), "--out", str(tmp_path / "p.jsonl"),
                 "--params", '{"prompt_form": "markdown"}']) == 1
    assert "judge.prompt_form: unknown 'markdown'" in capsys.readouterr().err
    assert main(["annotate", "--outputs", "o.json", "--reference", "r.json", "--out", str(tmp_path / "a.json"),
                 "--params", '{"prompt_form": "chat"}']) == 1
    assert "evaluation.annotator.prompt_form" in capsys.readouterr().err
