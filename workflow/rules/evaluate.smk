# Every iterate pi_0..pi_T on the evaluation prompts: generation with evaluation.generation,
# alpaca_eval model outputs, pairwise annotation against the reference (pi_0's outputs or a
# file), metrics, and optionally Self-BLEU. pi_0's evaluation is shared under results/base/eval/pi0.
# With shards.eval_generate = N > 1 both generations are N jobs (`--shard i/N`) joined by local merges.


rule eval_generate:
    input:
        model=evaluated_input,
        prompts="results/prompts/eval.jsonl",
    output:
        sharded("results/{reg}/eval/pi{t}/responses.jsonl", "eval_generate"),
    log:
        sharded("logs/{reg}/eval/pi{t}/generate.log", "eval_generate"),
    benchmark:
        sharded("logs/benchmarks/{reg}/eval/pi{t}/generate.tsv", "eval_generate")
    conda:
        conda_env("eval_generate")
    threads: rule_threads("eval_generate")
    resources:
        **rule_resources("eval_generate"),
    params:
        python=rule_python("eval_generate"),
        model=evaluated,
        generation=EVAL_GENERATE_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} {params.shard} > {log:q} 2>&1"


if config["shards"]["eval_generate"] > 1:

    rule eval_generate_merge:
        input:
            parts=shard_parts(
                "results/{reg}/eval/pi{t}/responses.jsonl", "eval_generate"
            ),
            source="results/prompts/eval.jsonl",
        output:
            "results/{reg}/eval/pi{t}/responses.jsonl",
        log:
            "logs/{reg}/eval/pi{t}/generate_merge.log",
        benchmark:
            "logs/benchmarks/{reg}/eval/pi{t}/generate_merge.tsv"
        localrule: True
        conda:
            conda_env("eval_generate_merge")
        threads: rule_threads("eval_generate_merge")
        resources:
            **rule_resources("eval_generate_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind responses"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"

    rule selfbleu_generate_merge:
        input:
            parts=shard_parts(
                "results/{reg}/eval/pi{t}/selfbleu_responses.jsonl", "eval_generate"
            ),
            source="results/prompts/selfbleu.jsonl",
        output:
            "results/{reg}/eval/pi{t}/selfbleu_responses.jsonl",
        log:
            "logs/{reg}/eval/pi{t}/selfbleu_generate_merge.log",
        benchmark:
            "logs/benchmarks/{reg}/eval/pi{t}/selfbleu_generate_merge.tsv"
        localrule: True
        conda:
            conda_env("selfbleu_generate_merge")
        threads: rule_threads("selfbleu_generate_merge")
        resources:
            **rule_resources("selfbleu_generate_merge"),
        shell:
            "python -m rspo --threads {threads} merge --kind responses"
            " --source {input.source:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"


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
        sharded("results/{reg}/eval/pi{t}/selfbleu_responses.jsonl", "eval_generate"),
    log:
        sharded("logs/{reg}/eval/pi{t}/selfbleu_generate.log", "eval_generate"),
    benchmark:
        sharded(
            "logs/benchmarks/{reg}/eval/pi{t}/selfbleu_generate.tsv", "eval_generate"
        )
    conda:
        conda_env("selfbleu_generate")
    threads: rule_threads("selfbleu_generate")
    resources:
        **rule_resources("selfbleu_generate"),
    params:
        python=rule_python("selfbleu_generate"),
        model=evaluated,
        generation=SELFBLEU_GENERATE_PARAMS,
        shard=shard_arg,
    shell:
        "{params.python:q} -m rspo --threads {threads} generate"
        " --model {params.model:q} --prompts {input.prompts:q}"
        " --out {output:q} --params {params.generation:q} {params.shard} > {log:q} 2>&1"


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
