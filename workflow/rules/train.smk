rule train:
    input:
        base=f"{R}/model/base",
        data=f"{R}/data/{{task}}/train.jsonl",
        init=train_init,
        corpus=train_corpus,
    output:
        weights=f"{R}/train/seed-{{seed}}/{{method}}/{{schedule}}/{{stage}}-{{task}}/weights.safetensors",
        run=f"{R}/train/seed-{{seed}}/{{method}}/{{schedule}}/{{stage}}-{{task}}/run.jsonl",
        drift=f"{R}/train/seed-{{seed}}/{{method}}/{{schedule}}/{{stage}}-{{task}}/drift.parquet",
    log:
        f"{LOGS}/train/seed-{{seed}}/{{method}}/{{schedule}}/{{stage}}-{{task}}.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    resources:
        # one GPU per process on CUDA runtimes (the slurm profile leaves train's gpu to this)
        gpu=train_gpus,
        # torchrun --standalone sees only the local GPUs: every process on one node
        nodes=1,
    params:
        cfg=lambda w: js(method_config(w.method, w.task, w.seed)),
        task_cfg=lambda w: js(config["tasks"][w.task]),
        runtime=lambda w: f"--device {RUNTIME['device']} --dtype {train_dtype(w.method)}",
        init=lambda w, input: f"--init {input.init}" if input.init else "",
        corpus=lambda w, input: f"--corpus {input.corpus}" if input.corpus else "",
        kind=lambda w: method_kind(w.method),
        launch=lambda w, threads: train_launcher(w, threads),
        # resume state lives outside the outputs, which Snakemake deletes before a job starts
        state=lambda w: f"{R}/state/train/seed-{w.seed}/{w.method}/{w.schedule}/{w.stage}-{w.task}",
    shell:
        "{params.launch} train --method {params.kind} --task {wildcards.task} "
        "--run-id {wildcards.method}/{wildcards.schedule}/{wildcards.stage}-{wildcards.task} "
        "--base {input.base} {params.init} {params.corpus} --data $(dirname {input.data}) {params.runtime} "
        "--cfg {params.cfg:q} --task-cfg {params.task_cfg:q} --state-dir {params.state} "
        "--out $(dirname {output.weights}) > {log} 2>&1"
