"""rspo.prompts / rspo prepare-prompts: the embedded set, local files, HF datasets (offline error)."""

from __future__ import annotations

import json

import pytest

from rspo.config import ConfigError, PromptSource
from rspo.errors import HubUnavailableError, RSPOError
from rspo.prompts import load_prompts


@pytest.fixture
def embedded(tmp_path):
    rows = [
        {"prompt_id": "e1", "prompt": "Why is the sky blue?", "category": "explanation", "split": "train1"},
        {"prompt_id": "e2", "prompt": "Name three rivers.", "category": "lists", "split": "eval"},
        {"prompt_id": "e3", "prompt": "Write a haiku.", "category": "writing", "split": "train1"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_embedded_split_keeps_ids_and_categories(embedded):
    rows = load_prompts(PromptSource(embedded="train1"), embedded_file=embedded)
    assert rows == [
        {"prompt_id": "e1", "prompt": "Why is the sky blue?", "category": "explanation"},
        {"prompt_id": "e3", "prompt": "Write a haiku.", "category": "writing"},
    ]
    with pytest.raises(ConfigError, match="splits: eval, train1"):
        load_prompts(PromptSource(embedded="train9"), embedded_file=embedded)


def test_json_list_ids_from_stem_and_slice_keeps_them(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": f"Task {i}"} for i in range(5)]))
    rows = load_prompts(PromptSource(path=str(path), column="instruction", offset=1, limit=2))
    assert rows == [{"prompt_id": "alpaca-1", "prompt": "Task 1"}, {"prompt_id": "alpaca-2", "prompt": "Task 2"}]
    assert len(load_prompts(PromptSource(path=str(path), column="instruction", offset=3))) == 2


def test_json_list_of_strings(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(["Hello?", "Bye?"]))
    assert load_prompts(PromptSource(path=str(path))) == [
        {"prompt_id": "plain-0", "prompt": "Hello?"}, {"prompt_id": "plain-1", "prompt": "Bye?"}]


def test_jsonl_with_id_column_and_chat_messages(tmp_path):
    path = tmp_path / "uf.jsonl"
    records = [
        {"prompt_id": 17, "prompt": "What is 2+2?"},
        {"prompt_id": 18, "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = load_prompts(PromptSource(path=str(path), id_column="prompt_id"))
    assert rows == [{"prompt_id": "17", "prompt": "What is 2+2?"}, {"prompt_id": "18", "prompt": "Hi!"}]


def test_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "sppo-iter1.parquet"
    pd.DataFrame({"prompt": ["A?", "B?", "C?"], "score": [1, 2, 3]}).to_parquet(path)
    rows = load_prompts(PromptSource(path=str(path), limit=2))
    assert rows == [{"prompt_id": "sppo-iter1-0", "prompt": "A?"}, {"prompt_id": "sppo-iter1-1", "prompt": "B?"}]


@pytest.mark.parametrize(
    "records, match",
    [
        ([{"id": "a", "prompt": "ok"}, {"id": "b", "prompt": "   "}], r"bad\.json: prompt 'b' is empty"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], r"bad\.json: duplicate prompt id 'a'"),
        ([{"id": "a", "text": "x"}], r"bad\.json: row 0: no field 'prompt'"),
        ([{"id": "a", "prompt": 3}], r"bad\.json: prompt 'a': expected a string"),
    ],
)
def test_bad_prompts_name_the_file(tmp_path, records, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(RSPOError, match=match):
        load_prompts(PromptSource(path=str(path), id_column="id"))


def test_exactly_one_source_and_valid_slice(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        load_prompts(PromptSource())
    with pytest.raises(ConfigError, match="exactly one"):
        load_prompts(PromptSource(embedded="train1", path="x.json"))
    with pytest.raises(ConfigError, match="offset"):
        load_prompts(PromptSource(embedded="train1", offset=-1))
    with pytest.raises(RSPOError, match="not found"):
        load_prompts(PromptSource(path=str(tmp_path / "missing.jsonl")))


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match=r"rspo-test/no-such-dataset.*HF_HUB_OFFLINE=1"):
        load_prompts(PromptSource(dataset="rspo-test/no-such-dataset", split="train"))


def test_prepare_prompts_cli_writes_a_prompts_table(tmp_path):
    from rspo.artifacts import read_table
    from rspo.cli import main

    src = tmp_path / "set.jsonl"
    src.write_text("".join(json.dumps({"q": f"Question {i}?"}) + "\n" for i in range(3)))
    out = tmp_path / "prompts.jsonl"
    assert main(["prepare-prompts", "--params", json.dumps({"path": str(src), "column": "q"}), "--out", str(out)]) == 0
    assert read_table(out, "prompts") == [{"prompt_id": f"set-{i}", "prompt": f"Question {i}?"} for i in range(3)]
    assert main(["prepare-prompts", "--params", json.dumps({"path": str(src), "column": "nope"}),
                 "--out", str(tmp_path / "x.jsonl")]) == 1
    assert not (tmp_path / "x.jsonl").exists()
