# Table 1's earlier budgets: a single-task run's weights after k < T iterations, rebuilt bit for bit
# from its initial weights and run.jsonl (`esft replay --iterations k`) and evaluated on its task.


rule replay_budget:
    input:
        base=f"{R}/model/base",
        run=f"{R}/train/seed-{{seed}}/{{method}}/single/1-{{task}}/run.jsonl",
    output:
        f"{R}/budget/seed-{{seed}}/{{method}}/single/1-{{task}}/{{k}}/weights.safetensors",
    log:
        f"{LOGS}/budget/seed-{{seed}}/{{method}}/{{task}}/{{k}}/replay.log",
    wildcard_constraints:
        k="[0-9]+",
    conda:
        "../../envs/esft.yaml"
    shell:
        "esft replay --base {input.base} --run {input.run} --iterations {wildcards.k} --out {output} > {log} 2>&1"


rule evaluate_budget:
    input:
        base=f"{R}/model/base",
        weights=f"{R}/budget/seed-{{seed}}/{{method}}/single/1-{{task}}/{{k}}/weights.safetensors",
        data=f"{R}/data/{{task}}/test.jsonl",
    output:
        metrics=f"{R}/budget/seed-{{seed}}/{{method}}/single/1-{{task}}/{{k}}/accuracy.json",
        completions=f"{R}/budget/seed-{{seed}}/{{method}}/single/1-{{task}}/{{k}}/completions.jsonl",
    log:
        f"{LOGS}/budget/seed-{{seed}}/{{method}}/{{task}}/{{k}}/evaluate.log",
    wildcard_constraints:
        k="[0-9]+",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=js(accuracy_config()),
        task_cfg=lambda w: js({w.task: config["tasks"][w.task]}),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
    shell:
        "esft --threads {threads} evaluate --base {input.base} --weights {input.weights} {params.runtime} "
        "--data {wildcards.task}=$(dirname {input.data}) --tasks-cfg {params.task_cfg:q} --cfg {params.cfg:q} "
        "--out {output.metrics} > {log} 2>&1"


# LBES vs ES: test accuracy along each compared run (base, replayed iterations, final checkpoint) at the
# run's cumulative wall time and generated tokens
rule collect_accuracy_curves:
    input:
        base=f"{R}/eval/base/accuracy.json",
        runs=[f"{run_dir(*run)}/run.jsonl" for run in lbes_runs()],
        finals=[f"{R}/eval/{run_label(*run)}/accuracy.json" for run in lbes_runs()],
        points=[f"{budget_dir(*p)}/accuracy.json" for p in curve_points()],
    output:
        f"{R}/eval/accuracy_curves.csv",
    log:
        f"{LOGS}/collect_accuracy_curves.log",
    conda:
        "../../envs/esft.yaml"
    params:
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}/run.jsonl" for run in lbes_runs()),
        points=" ".join(
            [f"{run_label(*run)}@final={R}/eval/{run_label(*run)}/accuracy.json" for run in lbes_runs()]
            + [f"{budget_key(*p)}={budget_dir(*p)}/accuracy.json" for p in curve_points()]
        ),
    shell:
        "esft accuracy-curves --base-accuracy {input.base} --runs {params.runs} --points {params.points} "
        "--out {output} > {log} 2>&1"
