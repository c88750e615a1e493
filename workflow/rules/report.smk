rule figure_accuracy_sequential:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        report(f"{R}/figures/accuracy_sequential.png", caption="../report/accuracy_sequential.rst", category="Accuracy"),
    log:
        f"{LOGS}/figures/accuracy_sequential.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["figures"]),
    shell:
        "esft figure accuracy --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_training_fitness:
    input:
        [f"{run_dir(*run)}/run.jsonl" for run in training_runs()],
    output:
        report(f"{R}/figures/training_fitness.png", caption="../report/training_fitness.rst", category="Training"),
    log:
        f"{LOGS}/figures/training_fitness.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["figures"]),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in training_runs()),
    shell:
        "esft figure fitness --inputs {params.runs} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule table_accuracy:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        csv=f"{R}/tables/accuracy.csv",
        md=report(f"{R}/tables/accuracy.md", caption="../report/accuracy_table.rst", category="Tables"),
    log:
        f"{LOGS}/tables/accuracy.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["tables"]),
    shell:
        "esft table accuracy --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} > {log} 2>&1"


rule table_update_norms:
    input:
        f"{R}/geometry/update_norms.csv",
    output:
        csv=f"{R}/tables/update_norms.csv",
        md=report(f"{R}/tables/update_norms.md", caption="../report/update_norms.rst", category="Tables"),
    log:
        f"{LOGS}/tables/update_norms.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["tables"]),
    shell:
        "esft table norms --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} > {log} 2>&1"
