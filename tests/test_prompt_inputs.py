"""Bad prompt sets and models: one clear error naming the file (and line), and prompts longer than
the prompt budget truncated per config (their END kept) and counted."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from rspo import artifacts
from rspo.cli import main
from rspo.config import PromptSource
from rspo.errors import RSPOError
from rspo.prompts import load_prompts


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', '{"prompt": "broken', '{"prompt": "ok"}'], r"p\.jsonl: line 2: not valid JSON"),
        (['{"prompt": "ok"}', "", '["a", "list"]'], r"p\.jsonl: line 3: expected an object or a string, got list"),
        (['{"prompt": "ok"}', '{"text": "no prompt field"}'], r"p\.jsonl: line 2: no field 'prompt'; fields: text"),
        (['{"id": "x", "prompt": "one"}', '{"id": "y", "prompt": "two"}', '{"id": "x", "prompt": "three"}'],
         r"p\.jsonl: duplicate prompt id 'x' \(line 1 and line 3\)"),
        (['{"id": "x", "prompt": " "}'], r"p\.jsonl: prompt 'x' is empty \(line 1\)"),
        ([], r"p\.jsonl: no prompts selected: the source has no prompts"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, message):
    id_column = "id" if any('"id"' in line for line in lines) else None
    with pytest.raises(RSPOError, match=message):
        load_prompts(PromptSource(path=_jsonl(tmp_path / "p.jsonl", lines), id_column=id_column))


def test_slice_that_selects_nothing_says_why(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", ['{"prompt": "one"}', '{"prompt": "two"}'])
    with pytest.raises(RSPOError, match=r"the source has 2 prompts; offset 5 and limit None select none"):
        load_prompts(PromptSource(path=path, offset=5))


def test_unreadable_and_undecodable_files(tmp_path, monkeypatch):
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(RSPOError, match=r"latin1\.jsonl: line 2: not UTF-8 text \(byte 15 of the line\)"):
        load_prompts(PromptSource(path=str(tmp_path / "latin1.jsonl")))
    (tmp_path / "d.json").mkdir()
    with pytest.raises(RSPOError, match=r"prompt file .*d\.json: not found"):
        load_prompts(PromptSource(path=str(tmp_path / "d.json")))
    # unreadable (EACCES): simulated, since CI runs as root and root reads any file
    path = _jsonl(tmp_path / "locked.jsonl", ['{"prompt": "ok"}'])
    real_open = open

    def locked(file, *args, **kwargs):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(artifacts, "open", locked, raising=False)
    with pytest.raises(RSPOError, match=r"^prompt file .*locked\.jsonl: cannot be read \(Permission denied\)$"):
        load_prompts(PromptSource(path=path))


def test_corrupt_parquet_and_json(tmp_path):
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(RSPOError, match=r"p\.parquet: not a readable Parquet file"):
        load_prompts(PromptSource(path=str(tmp_path / "p.parquet")))
    (tmp_path / "p.json").write_text('[{"prompt": "a"},')
    with pytest.raises(RSPOError, match=r"p\.json: not valid JSON \(Expecting value: line 1 column 18"):
        load_prompts(PromptSource(path=str(tmp_path / "p.json")))


def test_prepare_prompts_reports_a_malformed_line_in_one_line(tmp_path, capsys):
    path = _jsonl(tmp_path / "p.jsonl", ['{"prompt": "ok"}', "{oops}"])
    out = tmp_path / "prompts.jsonl"
    assert main(["prepare-prompts", "--params", json.dumps({"path": path}), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rspo prepare-prompts: error: {path}: line 2: not valid JSON") and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------- the prompt budget


def test_over_budget_prompts_are_counted_and_keep_their_end(tiny_model_dir):
    from rspo.chat import count_over_budget, encode_prompt
    from rspo.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    prompts = ["Hi.", "What is the capital of France?", "List five fruits: " + "apple, banana, " * 20]
    lengths = [len(encode_prompt(tok, p)) for p in prompts]
    assert lengths[0] < lengths[1] < lengths[2]
    budget = lengths[1]  # the first two fit exactly or below, the third does not
    assert count_over_budget(tok, prompts, budget) == 1
    assert count_over_budget(tok, prompts, lengths[0]) == 2
    assert count_over_budget(tok, prompts, lengths[0] - 1) == 3
    kept = encode_prompt(tok, prompts[2], max_length=budget)
    assert kept == encode_prompt(tok, prompts[2])[-budget:]  # the END, with the assistant turn's opening


def test_generate_and_logps_log_the_count(tiny_model_dir, tmp_path, caplog):
    from rspo.artifacts import write_table
    from rspo.chat import encode_prompt
    from rspo.commands.logps import cache_logps
    from rspo.config import TrainConfig
    from rspo.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    long = "Explain why the sky is blue. " * 8
    rows = [{"prompt_id": "short", "prompt": "Hi."}, {"prompt_id": "long", "prompt": long}]
    budget = len(encode_prompt(tok, "Hi.")) + 2
    write_table(tmp_path / "prompts.jsonl", rows, "prompts")
    params = {"max_prompt_length": budget, "sampling": {"n": 1, "max_new_tokens": 2}}
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "prompts.jsonl"),
                     "--out", str(tmp_path / "r.jsonl"), "--params", json.dumps(params), "--no-progress"]) == 0
    assert f"1 of 2 prompts are longer than generation.max_prompt_length = {budget} tokens" in caplog.text
    caplog.clear()
    pairs = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "chosen": "Yes.", "rejected": "No.",
              "chosen_index": 0, "rejected_index": 1, "p_chosen": 0.6, "p_rejected": 0.4, "scores": [1.0, -1.0]}
             for r in rows]
    cfg = TrainConfig(max_length=budget + 8, max_prompt_length=budget, logps_batch_size=2)
    with caplog.at_level(logging.WARNING):
        cache_logps(pairs, str(tiny_model_dir), str(tiny_model_dir), cfg)
    assert f"pi_t: 1 prompts are longer than train.max_prompt_length = {budget} tokens" in caplog.text


# --------------------------------------------------------------------------- chat template


@pytest.fixture
def no_template_model(tiny_model_dir, tmp_path):
    d = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_policy_without_chat_template_is_a_clear_error_before_the_model_loads(no_template_model, tmp_path,
                                                                                monkeypatch, capsys):
    from rspo import models
    from rspo.artifacts import write_table

    with pytest.raises(RSPOError, match=r"the tokenizer of '.*base-model' has no chat template"):
        models.load_tokenizer(str(no_template_model))
    assert models.load_tokenizer(str(no_template_model), chat_template=False).chat_template is None  # reward models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_causal_lm", refuse)
    write_table(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "Hi."}], "prompts")
    rc = main(["generate", "--model", str(no_template_model), "--prompts", str(tmp_path / "p.jsonl"),
               "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"rspo generate: error: the tokenizer of '{no_template_model}' has no chat template")
