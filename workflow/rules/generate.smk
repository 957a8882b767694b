# K responses per prompt of iteration t from pi_{t-1} (iteration 1: pi_0, shared under
# results/base/), and for regularizers with a forward_kl term samples of mu (results/base/).


rule generate:
    input:
        model=sampler_input,
        prompts="results/prompts/iter{t}.jsonl",
    output:
        "results/{reg}/iter{t}/responses.jsonl",
    log:
        "logs/{reg}/iter{t}/generate.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/generate.tsv"
    conda:
        conda_env("generate")
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    params:
        python=rule_python("generate"),
        model=sampler,
        generation=GENERATE_PARAMS,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} > {log:q} 2>&1"


rule generate_ref:
    input:
        model=reference_input,
        prompts="results/prompts/iter{t}.jsonl",
    output:
        "results/base/iter{t}/ref_responses.jsonl",
    log:
        "logs/base/iter{t}/generate_ref.log",
    benchmark:
        "logs/benchmarks/base/iter{t}/generate_ref.tsv"
    conda:
        conda_env("generate_ref")
    threads: rule_threads("generate_ref")
    resources:
        **rule_resources("generate_ref"),
    params:
        python=rule_python("generate_ref"),
        model=reference_model,
        generation=REF_GENERATE_PARAMS,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} > {log:q} 2>&1"
