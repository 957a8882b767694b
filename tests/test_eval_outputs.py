"""rspo eval-outputs: alpaca_eval model_outputs.json from responses; pairing outputs with a reference."""

from __future__ import annotations

import json

import pytest

from rspo.artifacts import ArtifactError, write_table
from rspo.cli import main
from rspo.evaluation.outputs import match_outputs, read_outputs, responses_to_model_outputs


def _responses(prompts, outputs, generator="models/pi1", **extra):
    return [
        {
            "prompt_id": f"p{k}",
            "prompt": p,
            "responses": o if isinstance(o, list) else [o],
            "num_tokens": [3] * (len(o) if isinstance(o, list) else 1),
            "finish_reasons": ["stop"] * (len(o) if isinstance(o, list) else 1),
            "generator": generator,
            "sampling": {"n": 1},
            **extra,
        }
        for k, (p, o) in enumerate(zip(prompts, outputs))
    ]


def test_cli_writes_model_outputs_in_prompt_order(tmp_path):
    rows = _responses(["Why is the sky blue?", "Name a fruit.", "Add 2 and 3."], ["Rayleigh.", "Apple.", "5"])
    rows[1]["dataset"] = "koala"  # a prompt that kept its AlpacaEval subset
    f = tmp_path / "responses.jsonl"
    write_table(f, rows, "responses")
    out = tmp_path / "model_outputs.json"
    assert main(["eval-outputs", "--responses", str(f), "--out", str(out), "--generator", "rspo-mixed-pi1"]) == 0
    assert json.loads(out.read_text()) == [
        {"instruction": "Why is the sky blue?", "output": "Rayleigh.", "generator": "rspo-mixed-pi1", "dataset": "rspo"},
        {"instruction": "Name a fruit.", "output": "Apple.", "generator": "rspo-mixed-pi1", "dataset": "koala"},
        {"instruction": "Add 2 and 3.", "output": "5", "generator": "rspo-mixed-pi1", "dataset": "rspo"},
    ]


def test_generator_defaults_to_the_model_and_n_must_be_one():
    out = responses_to_model_outputs(_responses(["q"], ["a"], generator="models/pi2"), dataset="mine")
    assert out == [{"instruction": "q", "output": "a", "generator": "models/pi2", "dataset": "mine"}]
    with pytest.raises(ArtifactError, match="2 responses"):
        responses_to_model_outputs(_responses(["q"], [["a", "b"]]))


def test_cli_rejects_samples_table(tmp_path, capsys):
    f = tmp_path / "responses.jsonl"
    write_table(f, _responses(["q"], [["a", "b"]]), "responses")
    assert main(["eval-outputs", "--responses", str(f), "--out", str(tmp_path / "o.json")]) == 1
    assert "sampling.n = 1" in capsys.readouterr().err


def test_match_outputs_follows_reference_order_and_whitespace():
    ref = [{"instruction": " b ", "output": "rb"}, {"instruction": "a", "output": "ra"}, {"instruction": "a", "output": "ra2"}]
    model = [{"instruction": "a", "output": "ma"}, {"instruction": "b", "output": "mb"}, {"instruction": "a", "output": "ma2"}]
    pairs = match_outputs(model, ref)
    assert [(r["output"], m["output"]) for r, m in pairs] == [("rb", "mb"), ("ra", "ma"), ("ra2", "ma2")]


def test_match_outputs_mismatch_names_both_files():
    ref = [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"}]
    model = [{"instruction": "a", "output": "x"}, {"instruction": "c", "output": "z"}]
    with pytest.raises(ArtifactError) as err:
        match_outputs(model, ref, "model.json", "ref.json")
    msg = str(err.value)
    assert "model.json" in msg and "ref.json" in msg and "'b'" in msg and "'c'" in msg


def test_read_outputs_validates(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps([{"instruction": "a"}]))
    with pytest.raises(ArtifactError, match="output"):
        read_outputs(f)


def test_eval_set_is_a_valid_reference(alpaca_eval_dir):
    rows = read_outputs(alpaca_eval_dir / "eval_set.json")
    assert len(rows) == 805 and set(rows[0]) == {"dataset", "instruction", "output", "generator"}
    # a prompt table that stripped the instructions still pairs with it, in canonical order
    model = [{"instruction": r["instruction"].strip(), "output": "x"} for r in reversed(rows)]
    pairs = match_outputs(model, rows)
    assert [r["instruction"] for r, _ in pairs] == [r["instruction"] for r in rows]
