# Table 1's earlier budgets: a single-task run's weights after k < T iterations, rebuilt bit for bit
# from its initial weights and run.jsonl (`esft replay --iterations k`) and evaluated on its task.


rule replay_budget:
    input:
        base=f"{R}/model/base",
        run=f"{R}/train/{{method}}/single/1-{{task}}/run.jsonl",
    output:
        f"{R}/budget/{{method}}/single/1-{{task}}/{{k}}/weights.safetensors",
    log:
        f"{LOGS}/budget/{{method}}/{{task}}/{{k}}/replay.log",
    wildcard_constraints:
        k="[0-9]+",
    conda:
        "../../envs/esft.yaml"
    shell:
        "esft replay --base {input.base} --run {input.run} --iterations {wildcards.k} --out {output} > {log} 2>&1"


rule evaluate_budget:
    input:
        base=f"{R}/model/base",
        weights=f"{R}/budget/{{method}}/single/1-{{task}}/{{k}}/weights.safetensors",
        data=f"{R}/data/{{task}}/test.jsonl",
    output:
        metrics=f"{R}/budget/{{method}}/single/1-{{task}}/{{k}}/accuracy.json",
        completions=f"{R}/budget/{{method}}/single/1-{{task}}/{{k}}/completions.jsonl",
    log:
        f"{LOGS}/budget/{{method}}/{{task}}/{{k}}/evaluate.log",
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
