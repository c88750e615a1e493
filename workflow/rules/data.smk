# Rules that read the hub run where the workflow is launched (compute nodes often have no internet);
# HF_TOKEN for gated repos comes from the environment, never from a file of ours.
localrules:
    prepare_task,
    prepare_corpus,
    base_model,
    holdout_snapshot,


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


rule prepare_corpus:
    output:
        f"{R}/data/corpus.jsonl",
    log:
        f"{LOGS}/prepare_corpus.log",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=js(config.get("corpus")),
    shell:
        "esft prepare-corpus --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule holdout_snapshot:
    output:
        directory(f"{R}/holdout/data/{{benchmark}}"),
    log:
        f"{LOGS}/holdout_snapshot/{{benchmark}}.log",
    wildcard_constraints:
        benchmark="mmlu|ifeval",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=lambda w: js(holdout_snapshot(w.benchmark)),
    shell:
        "esft holdout-snapshot --benchmark {wildcards.benchmark} --cfg {params.cfg:q} --out {output} > {log} 2>&1"
