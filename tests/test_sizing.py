"""rspo.sizing: one job's resources from the config's `resources` section (per shard, CPUs per GPU)."""

from __future__ import annotations

import pytest

from rspo.config import ConfigError
from rspo.launch import train_job
from rspo.sizing import SHARDED_STEP, START_MINUTES, job_resources, runtime_minutes, shard_runtime

ONE = {"generate": 1, "score": 1, "logps": 1, "eval_generate": 1}


@pytest.mark.parametrize(
    "value, minutes",
    [
        (45, 45),
        ("45", 45),
        ("90m", 90),
        ("90min", 90),
        ("12h", 720),
        ("1h30m", 90),
        ("2d", 2880),
        ("1.5h", 90),
        (" 2h ", 120),
        ("0.01h", 1),
    ],
)
def test_runtime_minutes_reads_minutes_and_durations(value, minutes):
    assert runtime_minutes(value) == minutes


@pytest.mark.parametrize("value", ["", "abc", "12x", "h", "1h junk", 0, "0", True, -5])
def test_runtime_minutes_rejects_what_is_not_a_duration(value):
    with pytest.raises(ConfigError, match="runtime"):
        runtime_minutes(value)


def test_a_shard_job_gets_its_share_of_the_step_plus_the_start():
    # the paper preset's generation: 12 h as one job, 4 shards -> 3 h of work + the model load each
    assert shard_runtime("12h", 4) == 180 + START_MINUTES
    assert shard_runtime(100, 3) == 34 + START_MINUTES  # rounded up, never below the share
    assert shard_runtime(720, 1) == 720  # one job: the configured value


def test_job_resources_divide_the_runtime_of_sharded_steps_only():
    settings = {"threads": 8, "mem_mb": 64000, "runtime": "12h", "gpu": 1}
    shards = {"generate": 4, "score": 2, "logps": 3, "eval_generate": 5}
    for rule, step in SHARDED_STEP.items():
        job = job_resources(rule, settings, shards)
        assert job["runtime"] == -(-720 // shards[step]) + START_MINUTES, rule
        assert job["mem_mb"] == 64000  # every shard loads the whole model
    # rules that are never sharded keep the configured runtime, in minutes
    for rule in ("train", "annotate", "pairs", "summarize", "generate_merge"):
        assert job_resources(rule, settings, shards)["runtime"] == 720, rule
    assert job_resources("generate", settings, ONE)["runtime"] == 720
    assert settings["runtime"] == "12h"  # the input is not modified


def test_gpu_jobs_get_cpus_per_gpu_and_cpu_jobs_do_not():
    assert job_resources("generate", {"threads": 8, "gpu": 1}, ONE)["cpus_per_gpu"] == 8
    assert job_resources("generate", {"threads": 7, "gpu": 2}, ONE)["cpus_per_gpu"] == 4  # rounded up
    assert "cpus_per_gpu" not in job_resources("generate", {"threads": 8, "gpu": 0}, ONE)
    assert "cpus_per_gpu" not in job_resources("pairs", {"threads": 2}, ONE)
    # a value set in the config wins
    assert job_resources("score", {"threads": 8, "gpu": 1, "cpus_per_gpu": 2}, ONE)["cpus_per_gpu"] == 2


@pytest.mark.parametrize("config_gpu", [1, 4])
def test_train_asks_for_num_processes_gpus_and_the_per_process_cpus(config_gpu):
    """As train.smk does: launch settings first (gpu = num_processes, threads x N), then sizing."""
    settings = {"threads": 6, "mem_mb": 128000, "runtime": 1440, "gpu": config_gpu}
    train = {"num_processes": 4, "accelerate_config": "config/accelerate/ddp.yaml"}
    job, _ = train_job(settings, train, "python")
    job = job_resources("train", job, {**ONE, "generate": 4})
    assert (job["gpu"], job["threads"], job["cpus_per_gpu"], job["runtime"]) == (4, 24, 6, 1440)


@pytest.mark.parametrize(
    "runtime, ok", [("12h", True), ("1h30m", True), (90, True), ("12 hours", False), (0, False)]
)
def test_the_schema_checks_runtime_before_any_job(runtime, ok):
    """What runtime_minutes reads, the config schema accepts; the rest is one line naming the key."""
    from pathlib import Path

    from rspo.preflight import validate_config

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    config = {"resources": {"generate": {"runtime": runtime}}}
    if ok:
        validate_config(config, schema)
        assert runtime_minutes(config["resources"]["generate"]["runtime"]) >= 1
    else:
        with pytest.raises(ConfigError, match="resources.generate.runtime"):
            validate_config(config, schema)
