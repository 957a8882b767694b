# log pi_{t-1} and log mu of every chosen/rejected response, cached once per iteration so that
# training holds one model in memory.


rule logps:
    input:
        pairs="results/{reg}/iter{t}/pairs.jsonl",
        last_model=sampler_input,
        ref_model=reference_input,
    output:
        "results/{reg}/iter{t}/pairs_logps.jsonl",
    log:
        "logs/{reg}/iter{t}/logps.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/logps.tsv"
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
    shell:
        "{params.python:q} -m rspo --threads {threads} logps"
        " --pairs {input.pairs:q} --last-model {params.last_model:q}"
        " --ref-model {params.ref_model:q} --out {output:q} --params {params.train:q}"
        " > {log:q} 2>&1"
