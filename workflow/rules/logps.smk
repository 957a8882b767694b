# log pi_{t-1} and log mu of every chosen/rejected response, cached once per iteration so that
# training holds one model in memory. With shards.logps = N > 1, N jobs (`--shard i/N`, each a
# pairs_logps_part table) joined by a local merge rule.


rule logps:
    input:
        pairs="results/{reg}/iter{t}/pairs.jsonl",
        last_model=sampler_input,
        ref_model=reference_input,
    output:
        sharded("results/{reg}/iter{t}/pairs_logps.jsonl", "logps"),
    log:
        sharded("logs/{reg}/iter{t}/logps.log", "logps"),
    benchmark:
        sharded("logs/benchmarks/{reg}/iter{t}/logps.tsv", "logps")
    conda:
        conda_env("logps")
    threads: rule_threads("logps")
    resources:
        **rule_resources("logps"),
    params:
        python=rule_python("logps"),
        last_model=sampler,
        ref_model=reference_model,
        train=LOGPS_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} logps"
        " --pairs {input.pairs:q} --last-model {params.last_model:q}"
        " --ref-model {params.ref_model:q} --out {output:q} --params {params.train:q}"
        " {params.shard} > {log:q} 2>&1"


if config["shards"]["logps"] > 1:

    rule logps_merge:
        input:
            parts=shard_parts("results/{reg}/iter{t}/pairs_logps.jsonl", "logps"),
            source="results/{reg}/iter{t}/pairs.jsonl",
        output:
            "results/{reg}/iter{t}/pairs_logps.jsonl",
        log:
            "logs/{reg}/iter{t}/logps_merge.log",
        benchmark:
            "logs/benchmarks/{reg}/iter{t}/logps_merge.tsv"
        localrule: True
        conda:
            conda_env("logps_merge")
        threads: rule_threads("logps_merge")
        resources:
            **rule_resources("logps_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind pairs_logps"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"
