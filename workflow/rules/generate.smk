# K responses per prompt of iteration t from pi_{t-1} (iteration 1: pi_0, shared under
# results/base/), and for regularizers with a forward_kl term samples of mu (results/base/).
# With shards.generate = N > 1 each is N jobs (`--shard i/N`) joined by a local merge rule.


rule generate:
    input:
        model=sampler_input,
        prompts="results/prompts/iter{t}.jsonl",
    output:
        sharded("results/{reg}/iter{t}/responses.jsonl", "generate"),
    log:
        sharded("logs/{reg}/iter{t}/generate.log", "generate"),
    benchmark:
        sharded("logs/benchmarks/{reg}/iter{t}/generate.tsv", "generate")
    conda:
        conda_env("generate")
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    params:
        python=rule_python("generate"),
        model=sampler,
        generation=GENERATE_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} {params.shard} > {log:q} 2>&1"


rule generate_ref:
    input:
        model=reference_input,
        prompts="results/prompts/iter{t}.jsonl",
    output:
        sharded("results/base/iter{t}/ref_responses.jsonl", "generate"),
    log:
        sharded("logs/base/iter{t}/generate_ref.log", "generate"),
    benchmark:
        sharded("logs/benchmarks/base/iter{t}/generate_ref.tsv", "generate")
    conda:
        conda_env("generate_ref")
    threads: rule_threads("generate_ref")
    resources:
        **rule_resources("generate_ref"),
    params:
        python=rule_python("generate_ref"),
        model=reference_model,
        generation=REF_GENERATE_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} {params.shard} > {log:q} 2>&1"


if config["shards"]["generate"] > 1:

    rule generate_merge:
        input:
            parts=shard_parts("results/{reg}/iter{t}/responses.jsonl", "generate"),
            source="results/prompts/iter{t}.jsonl",
        output:
            "results/{reg}/iter{t}/responses.jsonl",
        log:
            "logs/{reg}/iter{t}/generate_merge.log",
        benchmark:
            "logs/benchmarks/{reg}/iter{t}/generate_merge.tsv"
        localrule: True
        conda:
            conda_env("generate_merge")
        threads: rule_threads("generate_merge")
        resources:
            **rule_resources("generate_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind responses"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"

    rule generate_ref_merge:
        input:
            parts=shard_parts("results/base/iter{t}/ref_responses.jsonl", "generate"),
            source="results/prompts/iter{t}.jsonl",
        output:
            "results/base/iter{t}/ref_responses.jsonl",
        log:
            "logs/base/iter{t}/generate_ref_merge.log",
        benchmark:
            "logs/benchmarks/base/iter{t}/generate_ref_merge.tsv"
        localrule: True
        conda:
            conda_env("generate_ref_merge")
        threads: rule_threads("generate_ref_merge")
        resources:
            **rule_resources("generate_ref_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind responses"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"
