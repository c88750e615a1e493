rule figure_accuracy_sequential:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        report(f"{R}/figures/accuracy_sequential.png", caption="../report/accuracy_sequential.rst",
               category="Accuracy"),
    params:
        cfg=js(config["figures"]),
    log:
        f"{LOGS}/figures/accuracy_sequential.log",
    shell:
        "esft figure accuracy --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_training_fitness:
    input:
        [f"{run_dir(*run)}/run.jsonl" for run in training_runs()],
    output:
        report(f"{R}/figures/training_fitness.png", caption="../report/training_fitness.rst",
               category="Training"),
    params:
        cfg=js(config["figures"]),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in training_runs()),
    log:
        f"{LOGS}/figures/training_fitness.log",
    shell:
        "esft figure fitness --inputs {params.runs} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule table_accuracy:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        csv=f"{R}/tables/accuracy.csv",
        md=report(f"{R}/tables/accuracy.md", caption="../report/accuracy_table.rst", category="Tables"),
    params:
        cfg=js(config["tables"]),
    log:
        f"{LOGS}/tables/accuracy.log",
    shell:
        "esft table accuracy --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} > {log} 2>&1"


rule table_update_norms:
    input:
        f"{R}/geometry/update_norms.csv",
    output:
        csv=f"{R}/tables/update_norms.csv",
        md=report(f"{R}/tables/update_norms.md", caption="../report/update_norms.rst", category="Tables"),
    params:
        cfg=js(config["tables"]),
    log:
        f"{LOGS}/tables/update_norms.log",
    shell:
        "esft table norms --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} > {log} 2>&1"


rule table_holdout:
    input:
        f"{R}/eval/holdout.csv",
    output:
        csv=f"{R}/tables/holdout.csv",
        md=report(f"{R}/tables/holdout.md", caption="../report/holdout_table.rst", category="Tables"),
    params:
        cfg=js(config["tables"]),
    log:
        f"{LOGS}/tables/holdout.log",
    shell:
        "esft table holdout --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} > {log} 2>&1"
