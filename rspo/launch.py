"""How the workflow starts a step: which interpreter, and ``accelerate launch`` for multi-process training.

The Snakemake driver (snakemake + the SLURM plugin) and the GPU job environment (CUDA torch, vLLM,
DeepSpeed) cannot share one Python environment on Python <= 3.12 (the plugin needs numpy >= 2.4.5,
vLLM's mistral-common numpy < 2.4), so the rules that request a GPU run ``gpu_python`` (a second
venv's interpreter, config key ``gpu_python``) and every other rule the driver's ``python``.

The train rule runs ``python -m rspo train`` as one process, or, with ``train.num_processes`` N > 1
(or an ``train.accelerate_config``), ``python -m accelerate.commands.launch --num_processes N
--config_file F -m rspo train``: one process per GPU, with the data order, gradient reduction and
checkpoints of :mod:`rspo.train`. Its resources follow: ``gpu`` = N (one GPU per process) and
``threads`` = N x the per-process threads. Nothing here imports torch (the workflow imports it).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from rspo.config import ConfigError

DRIVER_PYTHON = "python"
LAUNCH_MODULE = "accelerate.commands.launch"


def rule_python(settings: Mapping[str, Any], gpu_python: str = DRIVER_PYTHON) -> str:
    """The interpreter of a rule with resolved ``settings``: ``gpu_python`` if it asks for a GPU."""
    return gpu_python if settings.get("gpu", 0) > 0 else DRIVER_PYTHON


def uses_launcher(num_processes: int, accelerate_config: str | None) -> bool:
    """Training goes through ``accelerate launch`` when it has several processes or a config file."""
    return num_processes > 1 or accelerate_config is not None


def check_train_launch(num_processes: int, accelerate_config: str | None) -> None:
    """ConfigError naming the key if the launch settings cannot run."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError(f"train.num_processes: must be an integer >= 1, got {num_processes!r}")
    if num_processes > 1 and accelerate_config is None:
        raise ConfigError(
            f"train.num_processes = {num_processes} needs train.accelerate_config (an accelerate config "
            "file: config/accelerate/ddp.yaml, fsdp.yaml or deepspeed_zero3.yaml)"
        )


def train_launch(python: str, num_processes: int, accelerate_config: str | None, gpus: int) -> str:
    """The shell prefix that, followed by ``-m rspo ...``, runs the train step.

    ``python`` alone for one process without a config file; else ``accelerate launch`` with
    ``num_processes`` processes and the config file. ``gpus`` is the rule's ``gpu`` resource: with
    none, the processes run on CPU (``ACCELERATE_USE_CPU=true``, gloo; accelerate's own ``--cpu``
    flag would start a single process).
    """
    check_train_launch(num_processes, accelerate_config)
    if not uses_launcher(num_processes, accelerate_config):
        return shlex.quote(python)
    words = [python, "-m", LAUNCH_MODULE, "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        words += ["--config_file", accelerate_config]
    prefix = "" if gpus > 0 else "ACCELERATE_USE_CPU=true "
    return prefix + shlex.join(words)


def train_settings(settings: Mapping[str, Any], num_processes: int) -> dict[str, Any]:
    """The train rule's threads and resources for ``num_processes`` processes.

    ``threads`` in the config are per process, so the job asks for ``num_processes`` times as many
    (``rspo --threads`` splits them again, :func:`process_threads`); a rule that asks for GPUs gets
    one per process (``gpu`` 1 or N in the config; anything else is an error). The job stays ONE
    task (SLURM): ``accelerate launch`` starts the processes itself, on one node.
    """
    out = dict(settings)
    if num_processes == 1:
        return out
    out["threads"] = out.get("threads", 1) * num_processes
    gpus = out.get("gpu", 0)
    if gpus > 0:
        if gpus not in (1, num_processes):
            raise ConfigError(
                f"resources: the train rule asks for gpu = {gpus} but train.num_processes = {num_processes}; "
                "training runs one process per GPU (set gpu to 1 or to num_processes)"
            )
        out["gpu"] = num_processes
    return out


def process_threads(threads: int, environ: Mapping[str, str] | None = None) -> int:
    """``rspo --threads T`` under a launcher: the step's T threads shared by this machine's processes."""
    environ = os.environ if environ is None else environ
    try:
        local = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, threads // max(1, local))


def train_job(settings: Mapping[str, Any], train: Mapping[str, Any], gpu_python: str = DRIVER_PYTHON
              ) -> tuple[dict[str, Any], str]:
    """The train rule: (threads and resources, launch prefix) from its resolved ``settings``, the
    config's ``train`` section and ``gpu_python``; ConfigError names the key."""
    job = train_settings(settings, train["num_processes"])
    prefix = train_launch(rule_python(job, gpu_python), train["num_processes"], train["accelerate_config"],
                          job.get("gpu", 0))
    return job, prefix
