# One prompt table per iteration (config `prompts`, one source each), the evaluation prompts
# (evaluation.prompts) and the Self-BLEU subset of them (evaluation.self_bleu.num_instructions).


rule prepare_prompts:
    output:
        "results/prompts/{split}.jsonl",
    log:
        "logs/prompts/{split}.log",
    benchmark:
        "logs/benchmarks/prompts/{split}.tsv"
    localrule: True
    conda:
        conda_env("prepare_prompts")
    threads: rule_threads("prepare_prompts")
    resources:
        **rule_resources("prepare_prompts"),
    params:
        source=prompt_params,
    shell:
        "python -m rspo --threads {threads} prepare-prompts"
        " --params {params.source:q} --out {output:q} > {log:q} 2>&1"
