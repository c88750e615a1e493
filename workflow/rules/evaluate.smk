rule evaluate:
    input:
        base=f"{R}/model/base",
        weights=checkpoint_weights,
        data=test_files(),
    output:
        metrics=f"{R}/eval/{{ckpt}}/accuracy.json",
        completions=f"{R}/eval/{{ckpt}}/completions.jsonl",
    log:
        f"{LOGS}/evaluate/{{ckpt}}.log",
    wildcard_constraints:
        ckpt="base|[a-z0-9_]+/(single|sequential)/[0-9]+-[a-z0-9_]+",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=js(config["evaluate"]),
        tasks_cfg=js(config["tasks"]),
        data=" ".join(f"{t}={R}/data/{t}" for t in task_names()),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
        weights=lambda w, input: f"--weights {input.weights}" if input.weights else "",
    shell:
        "esft --threads {threads} evaluate --base {input.base} {params.weights} {params.runtime} "
        "--data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} "
        "--out {output.metrics} > {log} 2>&1"


rule collect_accuracy:
    input:
        [f"{R}/eval/{label}/accuracy.json" for label in checkpoint_labels()],
    output:
        f"{R}/eval/accuracy.csv",
    log:
        f"{LOGS}/collect_accuracy.log",
    conda:
        "../../envs/esft.yaml"
    params:
        metrics=" ".join(f"{label}={R}/eval/{label}/accuracy.json" for label in checkpoint_labels()),
    shell:
        "esft collect-accuracy --metrics {params.metrics} --out {output} > {log} 2>&1"
