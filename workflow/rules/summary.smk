# results/summary.{csv,md}, the plots and the paper comparison over every (reg, iteration) of
# this run; all of them go into `snakemake --report results/report.html`. results/manifest.json is the
# run manifest of results/ (docs/artefacts.md).


rule summarize:
    input:
        summary_inputs(),
    output:
        index="results/summary_index.json",
        manifest="results/manifest.json",
        csv=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        md=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        comparison=report(
            "results/paper_comparison.md",
            caption="../report/paper_comparison.rst",
            category="Summary",
        ),
        plots=report(
            directory("results/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        "logs/summarize.log",
    benchmark:
        "logs/benchmarks/summarize.tsv"
    localrule: True
    conda:
        conda_env("summarize")
    threads: rule_threads("summarize")
    resources:
        **rule_resources("summarize"),
    params:
        index=as_json(summary_index()),
        out_dir=out_dir,
        policy=config["policy"],
        run_config=as_json(run_config()),
    shell:
        "printf '%s\\n' {params.index:q} > {output.index:q}"
        " && python -m rspo --threads {threads} summarize"
        " --index {output.index:q} --out-dir {params.out_dir:q} --policy {params.policy:q}"
        " --manifest {output.manifest:q} --run-config {params.run_config:q}"
        " > {log:q} 2>&1"
