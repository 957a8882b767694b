"""How steps are launched (rspo.launch), the data plan of several processes, and the shipped
accelerate configs (DDP, FSDP, DeepSpeed ZeRO-3) as accelerate's own launcher reads them."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from rspo.config import ConfigError, TrainConfig, load_config
from rspo.launch import process_threads, rule_python, train_job, train_launch, train_settings
from rspo.train import Plan, check_processes, configure_deepspeed

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "config" / "accelerate"


# --------------------------------------------------------------------------- interpreter and launcher


def test_rules_that_ask_for_a_gpu_run_the_gpu_python():
    assert rule_python({"gpu": 1, "threads": 8}, "/venvs/gpu/bin/python") == "/venvs/gpu/bin/python"
    assert rule_python({"gpu": 0}, "/venvs/gpu/bin/python") == "python"
    assert rule_python({"threads": 1}, "/venvs/gpu/bin/python") == "python"  # a CPU rule has no gpu key


def test_one_process_is_plain_python_and_several_go_through_accelerate_launch():
    assert train_launch("python", 1, None, gpus=1) == "python"
    assert train_launch("/my venv/bin/python", 1, None, gpus=1) == "'/my venv/bin/python'"
    cmd = train_launch("/my venv/bin/python", 4, "config/accelerate/deepspeed_zero3.yaml", gpus=4)
    assert shlex.split(cmd) == ["/my venv/bin/python", "-m", "accelerate.commands.launch", "--num_processes", "4",
                                "--config_file", "config/accelerate/deepspeed_zero3.yaml"]
    # one process with a config file (e.g. ZeRO-3 offload on one GPU) is launched too
    assert shlex.split(train_launch("python", 1, "z3.yaml", gpus=1))[2:5] == ["accelerate.commands.launch",
                                                                             "--num_processes", "1"]
    # without GPUs the processes join on CPU (gloo); accelerate's --cpu flag would start ONE process
    cpu = train_launch("python", 2, "config/accelerate/ddp.yaml", gpus=0)
    assert cpu.startswith("ACCELERATE_USE_CPU=true python -m accelerate.commands.launch --num_processes 2 ")
    assert "--cpu" not in cpu
    with pytest.raises(ConfigError, match=r"train.num_processes = 2 needs train.accelerate_config"):
        train_launch("python", 2, None, gpus=2)
    with pytest.raises(ConfigError, match="train.num_processes: must be an integer >= 1"):
        train_launch("python", 0, None, gpus=1)


def test_train_resources_follow_the_number_of_processes():
    gpu_rule = {"threads": 8, "mem_mb": 64000, "gpu": 1, "gpu_jobs": 1}
    assert train_settings(gpu_rule, 1) == gpu_rule
    # one GPU per process, the per-process threads for each; still one (SLURM) task: no `tasks` key
    assert train_settings(gpu_rule, 4) == {"threads": 32, "mem_mb": 64000, "gpu": 4, "gpu_jobs": 1}
    assert train_settings({**gpu_rule, "gpu": 4}, 4)["gpu"] == 4
    assert train_settings({"threads": 2, "gpu": 0}, 2) == {"threads": 4, "gpu": 0}  # CPU processes
    with pytest.raises(ConfigError, match="gpu = 2 but train.num_processes = 4"):
        train_settings({**gpu_rule, "gpu": 2}, 4)


def test_the_train_job_of_the_workflow():
    settings = {"threads": 8, "mem_mb": 64000, "gpu": 1, "gpu_jobs": 1}
    one = {"num_processes": 1, "accelerate_config": None}
    assert train_job(settings, one, "/gpu/bin/python") == (settings, "/gpu/bin/python")
    assert train_job({**settings, "gpu": 0}, one, "/gpu/bin/python")[1] == "python"  # no GPU: the driver's
    job, prefix = train_job(settings, {"num_processes": 2, "accelerate_config": "ddp.yaml"}, "/gpu/bin/python")
    assert job["gpu"] == 2 and job["threads"] == 16
    assert prefix == "/gpu/bin/python -m accelerate.commands.launch --num_processes 2 --config_file ddp.yaml"


def test_threads_are_shared_by_the_processes_of_a_machine():
    assert process_threads(8, {}) == 8
    assert process_threads(8, {"LOCAL_WORLD_SIZE": "4"}) == 2
    assert process_threads(2, {"LOCAL_WORLD_SIZE": "4"}) == 1  # never 0
    assert process_threads(3, {"LOCAL_WORLD_SIZE": "x"}) == 3


# --------------------------------------------------------------------------- data plan


@pytest.mark.parametrize("world, accum", [(2, 2), (4, 1), (3, 2)])
def test_processes_split_the_micro_batches_of_one_process(world, accum):
    """N processes x A micro-batches see exactly the micro-batches of one process accumulating N x A:
    process r's m-th micro-batch is the single process's micro-batch m * N + r (same global batch,
    same data order), so DDP's average over the processes is the single process's gradient."""
    cfg = TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=accum, num_epochs=2, seed=5)
    one = Plan.make(11, TrainConfig(per_device_batch_size=2, gradient_accumulation_steps=accum * world,
                                    num_epochs=2, seed=5))
    many = Plan.make(11, cfg, num_processes=world)
    assert (many.total_steps, many.steps_per_epoch, many.global_batch) == (one.total_steps, one.steps_per_epoch,
                                                                           one.global_batch)
    for step in range(one.total_steps):
        epoch, single = one.micro_batches(step)
        for rank in range(world):
            e, mine = many.micro_batches(step, rank)
            assert e == epoch and mine == [single[m * world + rank] for m in range(accum)]


# --------------------------------------------------------------------------- checks inside the trainer


class _Type:
    def __init__(self, name):
        self.name = name


class _FakeAccelerator:
    def __init__(self, n, kind="MULTI_CPU"):
        self.num_processes, self.distributed_type = n, _Type(kind)


def test_the_trainer_refuses_a_launch_that_does_not_match_its_config(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    check_processes(_FakeAccelerator(2), TrainConfig(num_processes=2))
    with pytest.raises(ConfigError, match=r"num_processes = 1 but this run has 2 process\(es\)"):
        check_processes(_FakeAccelerator(2), TrainConfig())
    # torchrun started 2 processes, but accelerate (no ACCELERATE_USE_CPU on CPU) runs each alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=true"):
        check_processes(_FakeAccelerator(1, "NO"), TrainConfig(num_processes=2))
    # FSDP asked for, plain DDP in effect (accelerate on CPU)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(Exception, match="asks for FSDP, but accelerate runs MULTI_CPU here"):
        check_processes(_FakeAccelerator(2), TrainConfig(num_processes=2))
    check_processes(_FakeAccelerator(2, "FSDP"), TrainConfig(num_processes=2))


def test_deepspeed_gets_the_micro_batch_and_the_clipping_of_the_train_config():
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    configure_deepspeed(ds, TrainConfig(per_device_batch_size=4, max_grad_norm=1.0))
    assert ds == {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0}
    ds = {}
    configure_deepspeed(ds, TrainConfig(per_device_batch_size=8, max_grad_norm=None))
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    configure_deepspeed({"gradient_clipping": 0.5}, TrainConfig(max_grad_norm=0.5))  # agreeing values stay
    with pytest.raises(ConfigError, match="gradient_clipping = 1.0 but train.max_grad_norm gives 0.0"):
        configure_deepspeed({"gradient_clipping": 1.0}, TrainConfig(max_grad_norm=None))


# --------------------------------------------------------------------------- shipped accelerate configs


def _launch_args(config_file: Path, n: int):
    """What `accelerate launch --num_processes n --config_file F -m rspo train` resolves to."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--num_processes", str(n), "--config_file", str(config_file),
                                               "-m", "rspo", "train"])
    return _validate_launch_command(args)


def test_ddp_and_fsdp_configs_start_one_torchrun_process_per_gpu():
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, defaults, _ = _launch_args(ACCELERATE / "ddp.yaml", 4)
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed) and args.num_processes == 4
    assert defaults.mixed_precision is None  # train.precision decides

    args, defaults, _ = _launch_args(ACCELERATE / "fsdp.yaml", 4)
    assert args.use_fsdp and not args.use_deepspeed and args.num_processes == 4
    assert defaults.mixed_precision is None
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "false"  # train.gradient_checkpointing owns it


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_deepspeed_zero3_config_is_the_authors_bf16_zero3_with_our_clipping(monkeypatch, max_grad_norm):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    path = ACCELERATE / "deepspeed_zero3.yaml"
    args, defaults, mp_from_config = _launch_args(path, 8)
    assert args.use_deepspeed and args.num_processes == 8 and args.mixed_precision == "bf16"
    assert "gradient_clipping" not in defaults.deepspeed_config  # the trainer sets it from the config
    args.deepspeed_fields_from_accelerate_config = ",".join(
        [*defaults.deepspeed_config, *(["mixed_precision"] if mp_from_config else [])])
    _, env = prepare_deepspeed_cmd_env(args)
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)

    # the plugin the trainer's Accelerator builds from the launcher's environment (no DeepSpeed needed)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    paper = load_config(ROOT / "config" / "paper-mistral7b.yaml").train
    cfg = TrainConfig(**{**paper.__dict__, "max_grad_norm": max_grad_norm})
    configure_deepspeed(plugin.deepspeed_config, cfg)
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # save_model gathers
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert paper.precision == "bf16"  # the paper preset trains in bf16, as this config
    assert ds["train_micro_batch_size_per_gpu"] == paper.per_device_batch_size
    assert ds["gradient_clipping"] == (max_grad_norm or 0.0)
    assert plugin.zero3_init_flag is False
