"""The typed config: YAML -> dataclasses, with errors that name the key."""

from __future__ import annotations

import json
import re

import pytest

from rspo.config import (
    ConfigError,
    GenerateConfig,
    RSPOConfig,
    TrainConfig,
    from_dict,
    load_config,
    parse_params,
    to_dict,
)


def test_nested_sections_are_typed():
    cfg = from_dict(
        RSPOConfig,
        {
            "iterations": 2,
            "prompts": [{"embedded": "train1", "limit": 8}, {"path": "p.jsonl"}],
            "generation": {"sampling": {"n": 3, "temperature": 1}},
            "train": {"regularizer": {"chi2": 0.2}, "learning_rate": "1e-5"},
        },
    )
    assert cfg.iterations == 2
    assert cfg.prompts[0].embedded == "train1" and cfg.prompts[0].limit == 8
    assert cfg.prompts[1].path == "p.jsonl" and cfg.prompts[1].embedded is None
    assert cfg.generation.sampling.n == 3
    assert isinstance(cfg.generation.sampling.temperature, float)
    assert cfg.train.learning_rate == 1e-5  # parsed, not computed: exactly the float 1e-5
    assert cfg.train.regularizer == {"chi2": 0.2}
    # untouched sections keep their defaults (the paper's values)
    assert cfg.train.eta == 1000.0 and cfg.train.max_length == 1024 and cfg.train.max_prompt_length == 512


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"etaa": 1}}, "config.train: unknown key(s) ['etaa']"),
        ({"iterations": "three"}, "config.iterations: expected an integer"),
        ({"iterations": True}, "config.iterations: expected an integer"),
        ({"generation": {"sampling": {"top_p": "high"}}}, "config.generation.sampling.top_p: expected a number"),
        ({"train": {"gradient_checkpointing": "yes"}}, "expected true or false"),
        ({"prompts": {"embedded": "train1"}}, "config.prompts: expected a list"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(RSPOConfig, data, "config")


def test_parse_params_json_file_and_defaults(tmp_path):
    assert parse_params(None, TrainConfig) == TrainConfig()
    p = parse_params(json.dumps({"eta": 10, "optimizer": "adamw"}), TrainConfig)
    assert p.eta == 10.0 and p.optimizer == "adamw"
    f = tmp_path / "g.yaml"
    f.write_text("backend: transformers\nsampling:\n  n: 2\n")
    g = parse_params(f"@{f}", GenerateConfig)
    assert g.sampling.n == 2
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_params("{eta: ", TrainConfig)
    # a round trip through to_dict is lossless
    assert from_dict(GenerateConfig, to_dict(g)) == g


def test_load_config_with_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reg: mixed\ntrain:\n  eta: 1000\n")
    cfg = load_config(f, ["train.eta=5", "reg=chi2", "generation.sampling.n=7"])
    assert cfg.train.eta == 5.0 and cfg.reg == "chi2" and cfg.generation.sampling.n == 7
    with pytest.raises(ConfigError, match="key=value"):
        load_config(f, ["train.eta"])
