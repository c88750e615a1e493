rule base_model:
    input:
        # the tiny model's warm-start never sees a held-out prompt
        held_out=test_files() if config["model"]["source"] == "tiny" else [],
    output:
        directory(f"{R}/model/base"),
    params:
        cfg=js(config["model"]),
    threads: 2
    log:
        f"{LOGS}/base_model.log",
    shell:
        "esft --threads {threads} base-model --cfg {params.cfg:q} --held-out {input.held_out} "
        "--out {output} > {log} 2>&1"
