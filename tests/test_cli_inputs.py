"""Every ``rspo`` subcommand validates its inputs before it loads a model.

Each case gives one bad input (missing file, wrong schema, bad ``--params``) together with a model
that does not exist; every model and tokenizer loader is replaced by one that fails the test, so
the case passes only if the input error is reported first: exit status 1 and one line on stderr
naming the culprit.
"""

from __future__ import annotations

import json
import math

import pytest

from rspo.artifacts import write_json, write_table
from rspo.cli import COMMANDS, main

NOMODEL = "/nonexistent/model"
JUDGE = json.dumps({"name": "reward_model", "model": NOMODEL})
RESPONSE = {"prompt_id": "a", "prompt": "Name a colour.", "responses": ["Red.", "Blue, I think."],
            "num_tokens": [2, 4], "finish_reasons": ["stop", "stop"], "generator": "m", "sampling": {"n": 2}}
PAIR = {"prompt_id": "a", "prompt": "Name a colour.", "chosen": "Red.", "rejected": "Blue, I think.",
        "chosen_index": 0, "rejected_index": 1, "p_chosen": 0.6, "p_rejected": 0.4, "scores": [1.0, -1.0]}
PAIR_LOGPS = {**PAIR, "last_logp_chosen": -3.0, "last_logp_rejected": -5.0, "ref_logp_chosen": -3.1,
              "ref_logp_rejected": -5.2, "chosen_tokens": 2, "rejected_tokens": 4}


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Loading any model or tokenizer fails the test."""
    import transformers

    from rspo import models

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded before the inputs were checked: {args[:1]}")

    for name in ("load_causal_lm", "load_tokenizer"):
        monkeypatch.setattr(models, name, refuse)
    for cls in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse)


@pytest.fixture
def files(tmp_path):
    f = {
        "prompts": tmp_path / "prompts.jsonl", "responses": tmp_path / "responses.jsonl",
        "responses2": tmp_path / "responses_k2.jsonl", "pairs": tmp_path / "pairs.jsonl",
        "pairs_logps": tmp_path / "pairs_logps.jsonl", "nan_logps": tmp_path / "nan_logps.jsonl",
        "outputs": tmp_path / "outputs.json", "other": tmp_path / "other.json", "index": tmp_path / "index.json",
    }
    write_table(f["prompts"], [{"prompt_id": "a", "prompt": "Name a colour."}], "prompts")
    write_table(f["responses"], [{**RESPONSE, "responses": ["Red."], "num_tokens": [2], "finish_reasons": ["stop"]}],
                "responses")
    write_table(f["responses2"], [RESPONSE], "responses")
    write_table(f["pairs"], [PAIR], "pairs")
    write_table(f["pairs_logps"], [PAIR_LOGPS], "pairs_logps")
    write_table(f["nan_logps"], [{**PAIR_LOGPS, "ref_logp_chosen": math.nan}], "pairs_logps")
    write_json(f["outputs"], [{"instruction": "Name a colour.", "output": "Red.", "generator": "m"}])
    write_json(f["other"], [{"instruction": "Another task.", "output": "Done.", "generator": "ref"}])
    write_json(f["index"], {"not": "a list"})
    return {k: str(v) for k, v in f.items()} | {"missing": str(tmp_path / "missing.jsonl"), "tmp": str(tmp_path)}


def fill(text: str, files: dict[str, str]) -> str:
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return text


# (subcommand, argv with {name} placeholders, text the one error line must contain);
# prepare-models is given a folder it did not write (it holds this test's files)
CASES = [
    ("prepare-models", ["prepare-models", "--out", "{tmp}"], "was not written by rspo prepare-models"),
    ("prepare-prompts", ["prepare-prompts", "--params", '{"path": "{missing}"}', "--out", "{tmp}/o.jsonl"],
     "missing.jsonl: not found"),
    ("prepare-prompts", ["prepare-prompts", "--params", '{"embedded": "train1", "limt": 3}', "--out", "{tmp}/o"],
     "unknown key(s) ['limt']"),
    ("generate", ["generate", "--model", NOMODEL, "--prompts", "{missing}", "--out", "{tmp}/o.jsonl"],
     "missing.jsonl: file not found (expected a prompts table)"),
    ("generate", ["generate", "--model", NOMODEL, "--prompts", "{responses}", "--out", "{tmp}/o.jsonl"],
     "line 1: expected header {'rspo_schema': 'prompts'"),
    ("generate", ["generate", "--model", NOMODEL, "--prompts", "{prompts}", "--out", "{tmp}/o.jsonl",
                  "--params", '{"sampling": {"n": 0}}'], "sampling.n=0 (need >= 1)"),
    ("generate", ["generate", "--model", NOMODEL, "--prompts", "{prompts}", "--out", "{tmp}/o.jsonl",
                  "--params", "@{missing}"], "--params @{missing}: cannot be read (No such file or directory)"),
    ("generate", ["generate", "--model", NOMODEL, "--prompts", "{prompts}", "--out", "{tmp}/o.jsonl",
                  "--params", "[1, 2]"], "--params must be a JSON object of GenerateConfig fields, got list"),
    ("score", ["score", "--responses", "{missing}", "--out", "{tmp}/o.jsonl", "--params", JUDGE],
     "missing.jsonl: file not found"),
    ("score", ["score", "--responses", "{responses}", "--out", "{tmp}/o.jsonl", "--params", '{"name": "gpt5"}'],
     "unknown judge 'gpt5'"),
    ("pairs", ["pairs", "--responses", "{responses2}", "--preferences", "{pairs}", "--out", "{tmp}/o.jsonl"],
     "expected header {'rspo_schema': 'preferences'"),
    ("logps", ["logps", "--pairs", "{missing}", "--last-model", NOMODEL, "--ref-model", NOMODEL,
               "--out", "{tmp}/o.jsonl"], "missing.jsonl: file not found"),
    ("logps", ["logps", "--pairs", "{pairs}", "--last-model", NOMODEL, "--ref-model", NOMODEL, "--out", "{tmp}/o",
               "--params", '{"max_length": 64, "max_prompt_length": 64}'], "need 0 < max_prompt_length < max_length"),
    ("train", ["train", "--pairs", "{pairs}", "--model", NOMODEL, "--out", "{tmp}/m", "--log", "{tmp}/l.jsonl"],
     "expected header {'rspo_schema': 'pairs_logps'"),
    ("train", ["train", "--pairs", "{nan_logps}", "--model", NOMODEL, "--out", "{tmp}/m", "--log", "{tmp}/l.jsonl"],
     "prompt_id 'a': non-finite or out-of-range value(s) ['ref_logp_chosen']"),
    ("train", ["train", "--pairs", "{pairs_logps}", "--model", NOMODEL, "--out", "{tmp}/m", "--log", "{tmp}/l",
               "--params", '{"regularizer": "forward_kl"}'], "the forward_kl regularizer needs --ref-samples"),
    ("train", ["train", "--pairs", "{pairs_logps}", "--model", NOMODEL, "--out", "{tmp}/m", "--log", "{tmp}/l",
               "--params", '{"regularizer": "kl9"}'], "TrainConfig.regularizer: "),
    ("eval-outputs", ["eval-outputs", "--responses", "{responses2}", "--out", "{tmp}/o.json"],
     "has 2 responses; evaluation outputs need exactly one per prompt"),
    ("annotate", ["annotate", "--outputs", "{missing}", "--reference", "{outputs}", "--out", "{tmp}/a.json",
                  "--params", JUDGE], "missing.jsonl: file not found"),
    ("annotate", ["annotate", "--outputs", "{outputs}", "--reference", "{other}", "--out", "{tmp}/a.json",
                  "--params", JUDGE], "does not match reference"),
    ("metrics", ["metrics", "{outputs}", "--json"], "lacks column(s) ['preference', 'output_1'"),
    ("self-bleu", ["self-bleu", "--responses", "{responses}", "--out", "{tmp}/s.json"],
     "Self-BLEU needs n >= 2 samples per prompt; found n = 1"),
    ("summarize", ["summarize", "--index", "{index}", "--out-dir", "{tmp}/sum"], "expected a non-empty JSON list"),
    ("merge", ["merge", "--kind", "responses", "--source", "{prompts}", "--out", "{tmp}/m.jsonl", "{missing}"],
     "missing.jsonl: file not found"),
]


def test_every_subcommand_has_a_case():
    assert {c[0] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize("command, argv, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_input_error_before_any_model_is_loaded(files, capsys, command, argv, message):
    rc = main([fill(a, files) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(f"rspo {command}: error: ")]
    assert rc == 1 and len(errors) == 1, err
    assert fill(message, files) in errors[0], errors[0]
    assert not any(line.startswith(("Traceback", "  File ")) for line in err), err
