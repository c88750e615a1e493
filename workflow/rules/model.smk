rule base_model:
    input:
        # the tiny model's warm-start never sees a held-out prompt
        held_out=test_files() if config["model"]["source"] == "tiny" else [],
        prebuilt=prebuilt_base(),
    output:
        directory(f"{R}/model/base"),
    log:
        f"{LOGS}/base_model.log",
    conda:
        "../../envs/esft.yaml"
    threads: 2
    params:
        cfg=js(config["model"]),
        prebuilt=f"--prebuilt {Path(prebuilt_base()[0]).parent}" if prebuilt_base() else "",
    shell:
        "esft --threads {threads} base-model --cfg {params.cfg:q} --held-out {input.held_out} "
        "{params.prebuilt} --out {output} > {log} 2>&1"
