rule figure_accuracy_sequential:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        png=report(
            f"{R}/figures/accuracy_sequential.png", caption="../report/accuracy_sequential.rst", category="Accuracy"
        ),
        pdf=f"{R}/figures/accuracy_sequential.pdf",
    log:
        f"{LOGS}/figures/accuracy_sequential.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("accuracy"),
    shell:
        "esft figure accuracy --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_kl_sequential:
    input:
        f"{R}/eval/kl.csv",
    output:
        png=report(f"{R}/figures/kl_sequential.png", caption="../report/kl_sequential.rst", category="Forgetting"),
        pdf=f"{R}/figures/kl_sequential.pdf",
    log:
        f"{LOGS}/figures/kl_sequential.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("kl_sequential"),
    shell:
        "esft figure kl --inputs {input} --cfg {params.cfg:q} --out {output.png} {output.pdf} > {log} 2>&1"


rule figure_training_fitness:
    input:
        [f"{run_dir(*run)}/run.jsonl" for run in training_runs()],
    output:
        png=report(f"{R}/figures/training_fitness.png", caption="../report/training_fitness.rst", category="Training"),
        pdf=f"{R}/figures/training_fitness.pdf",
    log:
        f"{LOGS}/figures/training_fitness.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("fitness"),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in training_runs()),
    shell:
        "esft figure fitness --inputs {params.runs} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_training_curves:
    input:
        [f"{run_dir(*run)}/run.jsonl" for run in training_runs()],
    output:
        png=report(f"{R}/figures/training_curves.png", caption="../report/training_curves.rst", category="Training"),
        pdf=f"{R}/figures/training_curves.pdf",
    log:
        f"{LOGS}/figures/training_curves.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("training"),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in training_runs()),
    shell:
        "esft figure training --inputs {params.runs} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_pretraining_loss:
    input:
        [f"{run_dir(*run)}/run.jsonl" for run in pretraining_runs()],
    output:
        png=report(f"{R}/figures/pretraining_loss.png", caption="../report/pretraining_loss.rst", category="Training"),
        pdf=f"{R}/figures/pretraining_loss.pdf",
    log:
        f"{LOGS}/figures/pretraining_loss.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("pretraining"),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in pretraining_runs()),
    shell:
        "esft figure pretraining --inputs {params.runs} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_interpolation:
    input:
        f"{R}/geometry/interpolation.csv",
    output:
        png=report(f"{R}/figures/interpolation.png", caption="../report/interpolation.rst", category="Geometry"),
        pdf=f"{R}/figures/interpolation.pdf",
    log:
        f"{LOGS}/figures/interpolation.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("interpolation"),
        methods=" ".join(geometry_methods()),
    shell:
        "esft figure interpolation --inputs {input} --methods {params.methods} --cfg {params.cfg:q} "
        "--out {output} > {log} 2>&1"


rule figure_probes:
    input:
        f"{R}/geometry/probes.csv",
    output:
        png=report(f"{R}/figures/probes.png", caption="../report/probes.rst", category="Geometry"),
        pdf=f"{R}/figures/probes.pdf",
    log:
        f"{LOGS}/figures/probes.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("probes"),
    shell:
        "esft figure probes --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_probes_holdout:
    input:
        f"{R}/geometry/probes_holdout.csv",
    output:
        png=report(f"{R}/figures/probes_holdout.png", caption="../report/probes_holdout.rst", category="Geometry"),
        pdf=f"{R}/figures/probes_holdout.pdf",
    log:
        f"{LOGS}/figures/probes_holdout.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("probes_holdout"),
    shell:
        "esft figure probes-holdout --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_drift:
    input:
        series=f"{R}/geometry/drift_series.csv",
        kinds=f"{R}/geometry/drift_kinds.csv",
        params=f"{R}/geometry/drift_params.csv",
    output:
        png=report(f"{R}/figures/drift.png", caption="../report/drift.rst", category="Drift"),
        pdf=f"{R}/figures/drift.pdf",
    log:
        f"{LOGS}/figures/drift.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("drift"),
    shell:
        "esft figure drift --inputs {input.series} {input.kinds} {input.params} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule table_accuracy:
    input:
        f"{R}/eval/accuracy.csv",
    output:
        csv=f"{R}/tables/accuracy.csv",
        md=report(f"{R}/tables/accuracy.md", caption="../report/accuracy_table.rst", category="Tables"),
        tex=f"{R}/tables/accuracy.tex",
    log:
        f"{LOGS}/tables/accuracy.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg(),
    shell:
        "esft table accuracy --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"


rule table_update_norms:
    input:
        f"{R}/geometry/update_norms.csv",
    output:
        csv=f"{R}/tables/update_norms.csv",
        md=report(f"{R}/tables/update_norms.md", caption="../report/update_norms.rst", category="Tables"),
        tex=f"{R}/tables/update_norms.tex",
    log:
        f"{LOGS}/tables/update_norms.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg(),
    shell:
        "esft table norms --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"


rule table_single_task:
    input:
        accuracy=f"{R}/eval/accuracy.csv",
        runs=[f"{run_dir(*run)}/run.jsonl" for run in single_runs()],
        budgets=[f"{budget_dir(*b)}/accuracy.json" for b in budget_runs()],
    output:
        csv=f"{R}/tables/single_task.csv",
        md=report(f"{R}/tables/single_task.md", caption="../report/single_task.rst", category="Tables"),
        tex=f"{R}/tables/single_task.tex",
    log:
        f"{LOGS}/tables/single_task.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg("single_task"),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in single_runs()),
        budgets=" ".join(f"{budget_key(*b)}={budget_dir(*b)}/accuracy.json" for b in budget_runs()),
    shell:
        "esft table single-task --input {input.accuracy} --runs {params.runs} --budgets {params.budgets} "
        "--cfg {params.cfg:q} --csv {output.csv} --md {output.md} --tex {output.tex} > {log} 2>&1"


rule table_norm_ratio:
    input:
        f"{R}/geometry/deltas.csv",
    output:
        csv=f"{R}/tables/norm_ratio.csv",
        md=report(f"{R}/tables/norm_ratio.md", caption="../report/norm_ratio.rst", category="Tables"),
        tex=f"{R}/tables/norm_ratio.tex",
    log:
        f"{LOGS}/tables/norm_ratio.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg(),
    shell:
        "esft table norm-ratio --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"


rule table_findings:
    input:
        unpack(findings_inputs),
    output:
        csv=f"{R}/tables/findings.csv",
        md=report(f"{R}/tables/findings.md", caption="../report/findings.rst", category="Findings"),
    log:
        f"{LOGS}/tables/findings.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["geometry"]["findings"]),
        methods=" ".join(geometry_methods()),
        inputs=lambda w, input: " ".join(f"--{name.replace('_', '-')} {path}" for name, path in input.items()),
    shell:
        "esft findings --methods {params.methods} {params.inputs} --cfg {params.cfg:q} --csv {output.csv} "
        "--md {output.md} > {log} 2>&1"


rule table_holdout:
    input:
        f"{R}/eval/holdout.csv",
    output:
        csv=f"{R}/tables/holdout.csv",
        md=report(f"{R}/tables/holdout.md", caption="../report/holdout_table.rst", category="Tables"),
        tex=f"{R}/tables/holdout.tex",
    log:
        f"{LOGS}/tables/holdout.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config["tables"]),
    shell:
        "esft table holdout --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"


# --- The other studies: ES with LoRA (blog) and LBES vs ES (targets: study_targets in common.smk) ----
rule figure_lora_prompt_rewards:
    input:
        f"{R}/eval/lora_prompt_rewards.csv",
    output:
        png=report(
            f"{R}/figures/lora_prompt_rewards.png",
            caption="../report/lora_prompt_rewards.rst",
            category="ES with LoRA",
        ),
        pdf=f"{R}/figures/lora_prompt_rewards.pdf",
    log:
        f"{LOGS}/figures/lora_prompt_rewards.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("lora_prompt_rewards"),
    shell:
        "esft figure lora-rewards --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_lora_cumulative_reward:
    input:
        f"{R}/eval/lora_prompt_rewards.csv",
    output:
        png=report(
            f"{R}/figures/lora_cumulative_reward.png",
            caption="../report/lora_cumulative_reward.rst",
            category="ES with LoRA",
        ),
        pdf=f"{R}/figures/lora_cumulative_reward.pdf",
    log:
        f"{LOGS}/figures/lora_cumulative_reward.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("lora_cumulative_reward"),
    shell:
        "esft figure lora-cumulative --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule figure_lora_training:
    input:
        runs=[f"{run_dir(*run)}/run.jsonl" for run in lora_runs()],
        curves=f"{R}/eval/lora_test_curves.csv",
    output:
        png=report(f"{R}/figures/lora_training.png", caption="../report/lora_training.rst", category="ES with LoRA"),
        pdf=f"{R}/figures/lora_training.pdf",
    log:
        f"{LOGS}/figures/lora_training.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("lora_training"),
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in lora_runs()),
    shell:
        "esft figure lora-training --inputs {params.runs} --test-curves {input.curves} --cfg {params.cfg:q} "
        "--out {output} > {log} 2>&1"


rule table_lora_rewards:
    input:
        f"{R}/eval/lora_test_curves.csv",
    output:
        csv=f"{R}/tables/lora_rewards.csv",
        md=report(f"{R}/tables/lora_rewards.md", caption="../report/lora_rewards.rst", category="ES with LoRA"),
        tex=f"{R}/tables/lora_rewards.tex",
    log:
        f"{LOGS}/tables/lora_rewards.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg(),
    shell:
        "esft table lora-rewards --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"


rule figure_accuracy_vs_cost:
    input:
        f"{R}/eval/accuracy_curves.csv",
    output:
        png=report(f"{R}/figures/accuracy_vs_cost.png", caption="../report/accuracy_vs_cost.rst", category="LBES vs ES"),
        pdf=f"{R}/figures/accuracy_vs_cost.pdf",
    log:
        f"{LOGS}/figures/accuracy_vs_cost.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=figure_cfg("accuracy_vs_cost"),
    shell:
        "esft figure accuracy-cost --inputs {input} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule table_time_to_accuracy:
    input:
        f"{R}/eval/accuracy_curves.csv",
    output:
        csv=f"{R}/tables/time_to_accuracy.csv",
        md=report(f"{R}/tables/time_to_accuracy.md", caption="../report/time_to_accuracy.rst", category="LBES vs ES"),
        tex=f"{R}/tables/time_to_accuracy.tex",
    log:
        f"{LOGS}/tables/time_to_accuracy.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=table_cfg("time_to_accuracy"),
    shell:
        "esft table time-to-accuracy --input {input} --cfg {params.cfg:q} --csv {output.csv} --md {output.md} "
        "--tex {output.tex} > {log} 2>&1"
