# pi_t from pi_{t-1}: the SPPO square loss plus lambda * R for regularizer {reg}.


rule train:
    input:
        pairs=pairs_logps_input,
        model=sampler_input,
        ref_samples=ref_samples_input,
    output:
        model=directory("results/{reg}/iter{t}/model"),
        train_log="results/{reg}/iter{t}/train_log.jsonl",
    log:
        "logs/{reg}/iter{t}/train.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/train.tsv"
    conda:
        conda_env("train")
    threads: rule_threads("train")
    resources:
        **rule_resources("train"),
    params:
        model=sampler,
        ref_samples=ref_samples_arg,
        train=train_params,
    shell:
        "python -m rspo --threads {threads} train"
        " --pairs {input.pairs:q} --model {params.model:q}"
        " --out {output.model:q} --log {output.train_log:q} --params {params.train:q}"
        " {params.ref_samples} > {log:q} 2>&1"
