"""rspo.preflight in-process: the checks common.smk runs before any job (the workflow-level behaviour,
one line and exit 1, is tested through snakemake in tests/test_workflow_validation.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from rspo.config import ConfigError
from rspo.preflight import (
    check_config,
    check_no_secrets,
    exit_on_config_error,
    is_dry_run,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
EMBEDDED_POLICY = DEFAULT["policy"]


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def checked(overlay: dict, dry_run: bool = False) -> list[str]:
    config = _merge(DEFAULT, overlay)
    validate_config(config, SCHEMA)
    return check_config(config, prepared=[EMBEDDED_POLICY], dry_run=dry_run)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the config are relative to the run folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def test_the_shipped_default_passes_and_its_policy_is_exempt_until_built():
    assert not Path(EMBEDDED_POLICY).exists()
    assert checked({}) == []


@pytest.mark.parametrize(
    "overlay, line",
    [
        ({"policy": "config"}, "policy: 'config' has no config.json: not a Hugging Face model folder"),
        ({"policy": "config/config.yaml"}, "policy: 'config/config.yaml' is a file; expected a model folder"),
        ({"reference": "./models/mu"}, "reference: './models/mu': no such local folder"),
        ({"evaluation": {"annotator": {"name": "embedded", "model": "~/no/minilm"}}},
         "evaluation.annotator.model: '~/no/minilm': no such local folder"),
        ({"judge": {"name": "reward_model"}}, "judge.model: the reward_model judge needs a model"),
        ({"evaluation": {"annotator": {"name": "alpaca_eval_vllm"}}},
         "evaluation.annotator.model: the alpaca_eval_vllm judge needs a model"),
        ({"judge": {"beta": 0}}, "judge.beta: 0 is less than or equal to the minimum of 0"),
        ({"generation": {"batch_size": 0}}, "generation.batch_size: 0 is less than the minimum of 1"),
        ({"evaluation": {"self_bleu": {"n": 1}}}, "evaluation.self_bleu.n: 1 is less than the minimum of 2"),
        ({"train": {"max_length": 100, "max_prompt_length": 200}},
         "train.max_prompt_length = 200 must be less than train.max_length = 100"),
        ({"evaluation": {"prompts": {"embedded": "eval", "path": "x.json"}}},
         "evaluation.prompts: sets embedded and path (exactly one of embedded, path or dataset"),
        ({"prompts": [{"embedded": None}]}, "prompts[0]: sets none of embedded, path, dataset"),
        ({"prompts": [{"path": "p.txt"}], "iterations": 1}, "prompts[0].path: 'p.txt': no such file"),
        ({"trian": {"eta": 1}}, "Additional properties are not allowed ('trian' was unexpected)"),
        ({"iterations": 4}, "prompts: lists 3 prompt set(s) but iterations = 4: give one prompt set per iteration"),
        ({"evaluation": {"df_gamed": "config"}}, "evaluation.df_gamed: 'config' is not a file"),
        ({"judge": {"options": {"hf_token": "hf_abc"}}}, "judge.options.hf_token: secrets are read from the environment"),
    ],
)
def test_bad_values_name_the_key(in_tmp, overlay, line):
    (in_tmp / "config").mkdir()
    (in_tmp / "config" / "config.yaml").write_text("reg: mixed\n")
    with pytest.raises(ConfigError) as exc:
        checked(overlay)
    assert str(exc.value).startswith(line), str(exc.value)
    assert "\n" not in str(exc.value)


def test_prompt_file_checks(in_tmp):
    (in_tmp / "p.txt").write_text("a prompt\n")
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.path: 'p.txt' has unsupported type '.txt' \(use .json"):
        checked({"prompts": [{"path": "p.txt"}], "iterations": 1})
    (in_tmp / "p.jsonl").write_text('{"prompt": "a prompt"}\n')
    assert checked({"prompts": [{"path": "p.jsonl"}], "iterations": 1}) == []


def test_unreadable_file_is_named(in_tmp, monkeypatch):
    import os

    (in_tmp / "ref.json").write_text("[]")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("ref.json") else real(p, m))
    with pytest.raises(ConfigError, match=r"^evaluation\.reference: 'ref.json' is not readable \(permission denied\)$"):
        checked({"evaluation": {"reference": "ref.json"}})


def test_hub_ids_offline_error_warn_in_a_dry_run_and_pass_when_cached(in_tmp):
    line = ("judge.model: 'org/pairrm-like' is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and it is not in the "
            "local cache; download it where the hub is reachable (huggingface-cli download org/pairrm-like) or set "
            "judge.model to a local folder")
    overlay = {"judge": {"name": "pairrm", "model": "org/pairrm-like"}}
    with pytest.raises(ConfigError) as exc:
        checked(overlay)
    assert str(exc.value) == line
    assert checked(overlay, dry_run=True) == [f"{line} (a run would stop here)"]
    # pairrm without a model is llm-blender/PairRM (rspo.preference.pairrm.DEFAULT_MODEL)
    with pytest.raises(ConfigError, match="judge.model: 'llm-blender/PairRM' is a Hugging Face hub id"):
        checked({"judge": {"name": "pairrm"}})
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.dataset: 'org/prompts' is a Hugging Face dataset id"):
        checked({"prompts": [{"embedded": None, "dataset": "org/prompts"}], "iterations": 1})
    # a snapshot in the local hub cache loads offline: no error
    snap = in_tmp / "hub" / "models--org--pairrm-like" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (in_tmp / "hub" / "models--org--pairrm-like" / "refs").mkdir()
    (in_tmp / "hub" / "models--org--pairrm-like" / "refs" / "main").write_text("0" * 40)
    assert checked(overlay) == []


def test_hub_ids_online_and_endpoint_model_names_are_not_checked(in_tmp, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert checked({"policy": "org/some-model"}) == []  # the hub decides at run time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # an llm judge's model is a name at an HTTP endpoint, as is alpaca_eval's: never a file or hub id
    assert checked({"judge": {"name": "llm", "model": "gpt-4o-mini"},
                    "evaluation": {"annotator": {"name": "alpaca_eval_gpt4_turbo", "model": "gpt-4-turbo"}}}) == []


def test_secrets_are_found_anywhere_and_only_secrets():
    check_no_secrets({"train": {"max_new_tokens": 3}, "judge": {"options": {"api_key_env": "MY_KEY", "top_logprobs": 5}}})
    check_no_secrets({"judge": {"options": {"api_key": None}}})  # unset is fine
    check_no_secrets({"regularizers": {"my_key": {"chi2": 0.1}}})  # a mixture's name, not a secret
    for name in ("api_key", "openai_api_key", "token", "hf_token", "password", "secret", "key"):
        with pytest.raises(ConfigError, match=rf"^a\.b\.{name}: secrets are read from the environment only"):
            check_no_secrets({"a": {"b": {name: "x"}}})


def test_schema_judge_names_match_the_code():
    from rspo.evaluation.alpaca_judges import NAMES
    from rspo.preference import JUDGES
    from rspo.preference.pairrm import DEFAULT_MODEL
    from rspo.preflight import PAIRRM_DEFAULT_MODEL

    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["properties"]["judge"]["properties"]["name"]["enum"] == list(JUDGES)
    annotator = schema["properties"]["evaluation"]["properties"]["annotator"]["properties"]["name"]["enum"]
    assert annotator == [*JUDGES, *NAMES]
    assert PAIRRM_DEFAULT_MODEL == DEFAULT_MODEL


def test_evaluation_generation_defaults_to_one_sample_when_partly_given():
    config = {"evaluation": {"generation": {"backend": "transformers", "sampling": {"temperature": 0.2}}}}
    validate_config(config, SCHEMA)
    assert config["evaluation"]["generation"]["sampling"] == {
        "temperature": 0.2, "n": 1, "max_new_tokens": 2048, "top_p": 0.9, "seed": 0, "seeding": "per_sample"}
    config = {}
    validate_config(config, SCHEMA)
    assert config["generation"]["sampling"]["n"] == 5 and config["evaluation"]["generation"]["sampling"]["n"] == 1


@pytest.mark.parametrize(
    "argv, dry",
    [
        (["snakemake", "-n"], True), (["snakemake", "--dry-run"], True), (["snakemake", "-np"], True),
        (["snakemake", "--dryrun", "--cores", "2"], True), (["snakemake", "-p", "--cores", "2"], False),
        (["snakemake", "--config", "reg=none"], False), (["snakemake", "-c", "4"], False),
    ],
)
def test_dry_run_detection(argv, dry):
    assert is_dry_run(argv) is dry


def test_exit_on_config_error_prints_one_line(capsys):
    with pytest.raises(SystemExit) as exc, exit_on_config_error():
        raise ConfigError("train.eta: bad")
    assert exc.value.code == 1
    assert capsys.readouterr().err == "rspo: config error: train.eta: bad\n"
    with exit_on_config_error():  # no error: nothing printed, no exit
        json.dumps({})
    assert capsys.readouterr().err == ""
