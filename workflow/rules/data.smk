rule prepare_task:
    output:
        train=f"{R}/data/{{task}}/train.jsonl",
        test=f"{R}/data/{{task}}/test.jsonl",
        manifest=f"{R}/data/{{task}}/manifest.json",
    log:
        f"{LOGS}/prepare_task/{{task}}.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=lambda w: js(config["tasks"][w.task]),
    shell:
        "esft prepare-task --task {wildcards.task} --cfg {params.cfg:q} " "--out $(dirname {output.train}) > {log} 2>&1"
