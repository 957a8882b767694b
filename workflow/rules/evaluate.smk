# Every iterate pi_0..pi_T on the evaluation prompts: generation with evaluation.generation,
# alpaca_eval model outputs, pairwise annotation against the reference (pi_0's outputs or a
# file), metrics, and optionally Self-BLEU. pi_0's evaluation is shared under results/base/eval/pi0.


rule eval_generate:
    input:
        model=evaluated_input,
        prompts="results/prompts/eval.jsonl",
    output:
        "results/{reg}/eval/pi{t}/responses.jsonl",
    log:
        "logs/{reg}/eval/pi{t}/generate.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/generate.tsv"
    conda:
        conda_env("eval_generate")
    threads: rule_threads("eval_generate")
    resources:
        **rule_resources("eval_generate"),
    params:
        python=rule_python("eval_generate"),
        model=evaluated,
        generation=EVAL_GENERATE_PARAMS,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} > {log:q} 2>&1"


rule eval_outputs:
    input:
        "results/{reg}/eval/pi{t}/responses.jsonl",
    output:
        "results/{reg}/eval/pi{t}/model_outputs.json",
    log:
        "logs/{reg}/eval/pi{t}/eval_outputs.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/eval_outputs.tsv"
    localrule: True
    conda:
        conda_env("eval_outputs")
    threads: rule_threads("eval_outputs")
    resources:
        **rule_resources("eval_outputs"),
    params:
        generator=generator_name,
    shell:
        "python -m rspo --threads {threads} eval-outputs"
        " --responses {input:q} --out {output:q}"
        " --generator {params.generator:q} > {log:q} 2>&1"


rule annotate:
    input:
        outputs="results/{reg}/eval/pi{t}/model_outputs.json",
        reference=reference_outputs(),
    output:
        "results/{reg}/eval/pi{t}/annotations.json",
    log:
        "logs/{reg}/eval/pi{t}/annotate.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/annotate.tsv"
    conda:
        conda_env("annotate")
    threads: rule_threads("annotate")
    resources:
        **rule_resources("annotate"),
    params:
        python=rule_python("annotate"),
        annotator=ANNOTATOR_PARAMS,
        seed=config["evaluation"]["seed"],
    shell:
        "{params.python:q} -m rspo --threads {threads} annotate"
        " --outputs {input.outputs:q} --reference {input.reference:q}"
        " --out {output:q} --params {params.annotator:q} --seed {params.seed} > {log:q} 2>&1"


rule metrics:
    input:
        annotations="results/{reg}/eval/pi{t}/annotations.json",
        df_gamed=df_gamed_input(),
    output:
        "results/{reg}/eval/pi{t}/metrics.json",
    log:
        "logs/{reg}/eval/pi{t}/metrics.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/metrics.tsv"
    localrule: True
    conda:
        conda_env("metrics")
    threads: rule_threads("metrics")
    resources:
        **rule_resources("metrics"),
    params:
        df_gamed=df_gamed_arg,
    shell:
        "python -m rspo --threads {threads} metrics"
        " {input.annotations:q} --json {params.df_gamed}"
        " --out {output:q} > {log:q} 2>&1"


rule selfbleu_generate:
    input:
        model=evaluated_input,
        prompts="results/prompts/selfbleu.jsonl",
    output:
        "results/{reg}/eval/pi{t}/selfbleu_responses.jsonl",
    log:
        "logs/{reg}/eval/pi{t}/selfbleu_generate.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/selfbleu_generate.tsv"
    conda:
        conda_env("selfbleu_generate")
    threads: rule_threads("selfbleu_generate")
    resources:
        **rule_resources("selfbleu_generate"),
    params:
        python=rule_python("selfbleu_generate"),
        model=evaluated,
        generation=SELFBLEU_GENERATE_PARAMS,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} > {log:q} 2>&1"


rule self_bleu:
    input:
        "results/{reg}/eval/pi{t}/selfbleu_responses.jsonl",
    output:
        "results/{reg}/eval/pi{t}/selfbleu.json",
    log:
        "logs/{reg}/eval/pi{t}/self_bleu.log",
    benchmark:
        "logs/benchmarks/{reg}/eval/pi{t}/self_bleu.tsv"
    localrule: True
    conda:
        conda_env("self_bleu")
    threads: rule_threads("self_bleu")
    resources:
        **rule_resources("self_bleu"),
    shell:
        "python -m rspo --threads {threads} self-bleu"
        " --responses {input:q} --out {output:q} > {log:q} 2>&1"
