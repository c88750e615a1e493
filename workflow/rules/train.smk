rule train:
    input:
        base=f"{R}/model/base",
        data=f"{R}/data/{{task}}/train.jsonl",
        init=train_init,
    output:
        weights=f"{R}/train/{{method}}/{{schedule}}/{{stage}}-{{task}}/weights.safetensors",
        run=f"{R}/train/{{method}}/{{schedule}}/{{stage}}-{{task}}/run.jsonl",
        drift=f"{R}/train/{{method}}/{{schedule}}/{{stage}}-{{task}}/drift.parquet",
    log:
        f"{LOGS}/train/{{method}}/{{schedule}}/{{stage}}-{{task}}.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=lambda w: js(method_config(w.method, w.task)),
        task_cfg=lambda w: js(config["tasks"][w.task]),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
        init=lambda w, input: f"--init {input.init}" if input.init else "",
        # resume state lives outside the outputs, which Snakemake deletes before a job starts
        state=lambda w: f"{R}/state/train/{w.method}/{w.schedule}/{w.stage}-{w.task}",
    shell:
        "esft --threads {threads} train --method {wildcards.method} --task {wildcards.task} "
        "--run-id {wildcards.method}/{wildcards.schedule}/{wildcards.stage}-{wildcards.task} "
        "--base {input.base} {params.init} --data $(dirname {input.data}) {params.runtime} "
        "--cfg {params.cfg:q} --task-cfg {params.task_cfg:q} --state-dir {params.state} "
        "--out $(dirname {output.weights}) > {log} 2>&1"
