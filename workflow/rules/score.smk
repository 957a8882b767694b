# K x K preference logits per prompt from the judge (config `judge`).


rule score:
    input:
        "results/{reg}/iter{t}/responses.jsonl",
    output:
        "results/{reg}/iter{t}/preferences.jsonl",
    log:
        "logs/{reg}/iter{t}/score.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/score.tsv"
    conda:
        conda_env("score")
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        python=rule_python("score"),
        judge=JUDGE_PARAMS,
    shell:
        "{params.python:q} -m rspo --threads {threads} score"
        " --responses {input:q} --out {output:q}"
        " --params {params.judge:q} > {log:q} 2>&1"
