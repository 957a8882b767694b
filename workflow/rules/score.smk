# K x K preference logits per prompt from the judge (config `judge`); with shards.score = N > 1,
# N jobs (`--shard i/N`) joined by a local merge rule.


rule score:
    input:
        "results/{reg}/iter{t}/responses.jsonl",
    output:
        sharded("results/{reg}/iter{t}/preferences.jsonl", "score"),
    log:
        sharded("logs/{reg}/iter{t}/score.log", "score"),
    benchmark:
        sharded("logs/benchmarks/{reg}/iter{t}/score.tsv", "score")
    conda:
        conda_env("score")
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        python=rule_python("score"),
        judge=JUDGE_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} score"
        " --responses {input:q} --out {output:q}"
        " --params {params.judge:q} {params.shard} > {log:q} 2>&1"


if config["shards"]["score"] > 1:

    rule score_merge:
        input:
            parts=shard_parts("results/{reg}/iter{t}/preferences.jsonl", "score"),
            source="results/{reg}/iter{t}/responses.jsonl",
        output:
            "results/{reg}/iter{t}/preferences.jsonl",
        log:
            "logs/{reg}/iter{t}/score_merge.log",
        benchmark:
            "logs/benchmarks/{reg}/iter{t}/score_merge.tsv"
        localrule: True
        conda:
            conda_env("score_merge")
        threads: rule_threads("score_merge")
        resources:
            **rule_resources("score_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind preferences"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"
