"""What one job of a rule asks the scheduler for, from the config's ``resources`` section.

The workflow (``workflow/rules/common.smk``) merges the layers of ``resources`` (built-in defaults <
``default`` < ``gpu_rules`` < the rule's name) and hands the result here; :func:`job_resources` turns
the STEP's settings into one JOB's:

- ``runtime`` is read in minutes (an integer, or ``"90m"``, ``"12h"``, ``"2d"``, ``"1h30m"``). For a
  step that can be sharded (``SHARDED_STEP``) it is the time of the whole step as one job; with
  ``shards.<step>`` = N > 1 each of the N jobs gets ``ceil(runtime / N) + START_MINUTES`` (its share of
  the work plus the model load that every job pays again). N = 1 keeps the configured value.
- ``mem_mb`` stays as configured: every shard loads the whole model.
- A job that asks for GPUs (``gpu`` >= 1) gets ``cpus_per_gpu`` = ceil(threads / gpu), which the SLURM
  plugin submits as ``--cpus-per-gpu`` (the CPUs move with the GPUs on nodes of several GPUs), unless
  the config sets it. The train rule's ``gpu`` = ``train.num_processes`` is set afterwards by
  :func:`rspo.launch.train_job`, which scales ``threads`` with it: ``cpus_per_gpu`` is per process.

Nothing here is a site setting: partitions, accounts, QoS, GPU models and constraints come from the
user's site profile (``profiles/site-example/``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from rspo.config import ConfigError

# rule -> the `shards:` key that splits it (rspo.config.ShardsConfig)
SHARDED_STEP = {
    "generate": "generate",
    "generate_ref": "generate",
    "score": "score",
    "logps": "logps",
    "eval_generate": "eval_generate",
    "selfbleu_generate": "eval_generate",
}
# minutes every shard job spends before its share of the work (start, model load, engine warm-up)
START_MINUTES = 10

_UNITS = {"m": 1, "min": 1, "h": 60, "d": 1440}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(min|m|h|d)")


def runtime_minutes(value: int | str) -> int:
    """A ``runtime`` resource in whole minutes: an integer (minutes) or e.g. ``"12h"``, ``"1h30m"``."""
    if isinstance(value, bool):
        raise ConfigError(f"resources: runtime {value!r} is not a duration")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip().lower().replace(" ", "")
        if text.isdigit():
            minutes = int(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(
                    f"resources: runtime {value!r} is not a duration (minutes, or e.g. 90m, 12h, 2d, 1h30m)"
                )
            minutes = math.ceil(sum(float(n) * _UNITS[u] for n, u in parts))
    if minutes < 1:
        raise ConfigError(f"resources: runtime {value!r} must be at least one minute")
    return minutes


def shard_runtime(runtime: int | str, shards: int) -> int:
    """Minutes one of ``shards`` jobs needs for a step that takes ``runtime`` as one job."""
    minutes = runtime_minutes(runtime)
    if shards == 1:
        return minutes
    return math.ceil(minutes / shards) + START_MINUTES


def job_resources(rule: str, settings: Mapping[str, Any], shards: Mapping[str, int]) -> dict[str, Any]:
    """One job's threads and resources for ``rule`` from its merged ``settings`` (the step's) and the
    config's ``shards`` counts."""
    job = dict(settings)
    if "runtime" in job:
        step = SHARDED_STEP.get(rule)
        job["runtime"] = shard_runtime(job["runtime"], shards[step] if step else 1)
    gpus = job.get("gpu", 0)
    if gpus > 0 and "cpus_per_gpu" not in job:
        job["cpus_per_gpu"] = math.ceil(job.get("threads", 1) / gpus)
    return job
