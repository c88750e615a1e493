rule prepare_task:
    output:
        train=f"{R}/data/{{task}}/train.jsonl",
        test=f"{R}/data/{{task}}/test.jsonl",
        manifest=f"{R}/data/{{task}}/manifest.json",
    params:
        cfg=lambda w: js(config["tasks"][w.task]),
    log:
        f"{LOGS}/prepare_task/{{task}}.log",
    shell:
        "esft prepare-task --task {wildcards.task} --cfg {params.cfg:q} "
        "--out $(dirname {output.train}) > {log} 2>&1"
