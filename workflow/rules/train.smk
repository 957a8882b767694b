# pi_t from pi_{t-1}: the SPPO square loss plus lambda * R for regularizer {reg}.
# One process, or `accelerate launch` with train.num_processes processes (one per GPU) and
# train.accelerate_config; the job then asks for num_processes GPUs and as many times the threads
# (rspo.launch). The logps step is not launched this way: it is sharded.


from rspo.config import ConfigError
from rspo.launch import train_job

try:
    TRAIN_SETTINGS, TRAIN_LAUNCH = train_job(
        rule_settings("train"), config["train"], config["gpu_python"]
    )
except ConfigError as exc:
    raise WorkflowError(f"config {exc}") from None


rule train:
    input:
        pairs=pairs_logps_input,
        model=sampler_input,
        ref_samples=ref_samples_input,
        accelerate_config=config["train"]["accelerate_config"] or [],
    output:
        model=directory("results/{reg}/iter{t}/model"),
        train_log="results/{reg}/iter{t}/train_log.jsonl",
    log:
        "logs/{reg}/iter{t}/train.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/train.tsv"
    conda:
        conda_env("train")
    threads: TRAIN_SETTINGS["threads"]
    resources:
        **{k: v for k, v in TRAIN_SETTINGS.items() if k != "threads"},
    params:
        launch=TRAIN_LAUNCH,
        model=sampler,
        ref_samples=ref_samples_arg,
        train=train_params,
    shell:
        "{params.launch} -m rspo --threads {threads} train"
        " --pairs {input.pairs:q} --model {params.model:q}"
        " --out {output.model:q} --log {output.train_log:q} --params {params.train:q}"
        " {params.ref_samples} > {log:q} 2>&1"
