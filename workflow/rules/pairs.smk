# Win-rate estimates and one chosen/rejected pair per prompt (rspo.winrate.select_pair).


rule pairs:
    input:
        responses="results/{reg}/iter{t}/responses.jsonl",
        preferences="results/{reg}/iter{t}/preferences.jsonl",
    output:
        pairs="results/{reg}/iter{t}/pairs.jsonl",
        stats="results/{reg}/iter{t}/pairs_stats.json",
    log:
        "logs/{reg}/iter{t}/pairs.log",
    benchmark:
        "logs/benchmarks/{reg}/iter{t}/pairs.tsv"
    localrule: True
    conda:
        conda_env("pairs")
    threads: rule_threads("pairs")
    resources:
        **rule_resources("pairs"),
    shell:
        "python -m rspo --threads {threads} pairs"
        " --responses {input.responses:q} --preferences {input.preferences:q}"
        " --out {output.pairs:q} --stats {output.stats:q} > {log:q} 2>&1"
