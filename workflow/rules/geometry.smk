rule update_norms:
    input:
        base=f"{R}/model/base",
        weights=[f"{run_dir(*run)}/weights.safetensors" for run in training_runs()],
    output:
        f"{R}/geometry/update_norms.csv",
    log:
        f"{LOGS}/update_norms.log",
    conda:
        "../../envs/esft.yaml"
    params:
        checkpoints=" ".join(f"{run_label(*run)}={run_dir(*run)}/weights.safetensors" for run in training_runs()),
    shell:
        "esft norms --base {input.base} --checkpoints {params.checkpoints} --out {output} > {log} 2>&1"


rule geometry_deltas:
    input:
        base=f"{R}/model/base",
        weights=pair_weights(),
    output:
        f"{R}/geometry/deltas.csv",
    log:
        f"{LOGS}/geometry/deltas.log",
    conda:
        "../../envs/esft.yaml"
    params:
        methods=" ".join(geometry_methods()),
        pairs=pair_args(),
    shell:
        "esft geometry-deltas --base {input.base} --methods {params.methods} --pairs {params.pairs} "
        "--out {output} > {log} 2>&1"


rule geometry_interpolation:
    input:
        base=f"{R}/model/base",
        weights=pair_weights(),
        data=[f"{R}/data/{t}/test.jsonl" for t in pair_tasks()],
    output:
        f"{R}/geometry/interpolation.csv",
    log:
        f"{LOGS}/geometry/interpolation.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=geometry_cfg("interpolation"),
        tasks_cfg=js(config["tasks"]),
        methods=" ".join(geometry_methods()),
        pairs=pair_args(),
        data=" ".join(f"{t}={R}/data/{t}" for t in pair_tasks()),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
    shell:
        "esft --threads {threads} interpolate --base {input.base} {params.runtime} --methods {params.methods} "
        "--pairs {params.pairs} --data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} "
        "--out {output} > {log} 2>&1"


rule geometry_probes:
    input:
        base=f"{R}/model/base",
        weights=pair_weights(),
        data=[f"{R}/data/{t}/test.jsonl" for t in pair_tasks()],
    output:
        f"{R}/geometry/probes.csv",
    log:
        f"{LOGS}/geometry/probes.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=geometry_cfg("probes"),
        tasks_cfg=js(config["tasks"]),
        methods=" ".join(geometry_methods()),
        pairs=pair_args(),
        data=" ".join(f"{t}={R}/data/{t}" for t in pair_tasks()),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
    shell:
        "esft --threads {threads} probe --base {input.base} {params.runtime} --methods {params.methods} "
        "--pairs {params.pairs} --data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} "
        "--out {output} > {log} 2>&1"


rule geometry_probe_holdout:
    input:
        unpack(probe_holdout_inputs),
        base=f"{R}/model/base",
        weights=pair_weights(probe_holdout_pairs()),
    output:
        f"{R}/geometry/probes_holdout.csv",
    log:
        f"{LOGS}/geometry/probes_holdout.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=probe_holdout_cfg(),
        holdout_cfg=lambda w: js({"batch_size": HOLDOUT["batch_size"], "benchmarks": HOLDOUT["benchmarks"]}),
        methods=" ".join(geometry_methods()),
        pairs=pair_args(probe_holdout_pairs()),
        data=probe_holdout_data,
        nltk=lambda w, input: f"--nltk-data {input.nltk_data}" if "nltk_data" in input.keys() else "",
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
        tasks_dir=LM_EVAL_TASKS,
    shell:
        "esft --threads {threads} probe-holdout --base {input.base} {params.runtime} --methods {params.methods} "
        "--pairs {params.pairs} --cfg {params.cfg:q} --holdout-cfg {params.holdout_cfg:q} --data {params.data} "
        "{params.nltk} --tasks-dir {params.tasks_dir} --out {output} > {log} 2>&1"


rule geometry_drift:
    input:
        [
            f"{run_dir(*run)}/{name}"
            for run in geometry_runs()
            for name in ("weights.safetensors", "run.jsonl", "drift.parquet")
        ],
    output:
        series=f"{R}/geometry/drift_series.csv",
        fits=f"{R}/geometry/drift_fits.csv",
        params=f"{R}/geometry/drift_params.csv",
        kinds=f"{R}/geometry/drift_kinds.csv",
    log:
        f"{LOGS}/geometry/drift.log",
    conda:
        "../../envs/esft.yaml"
    params:
        runs=" ".join(f"{run_label(*run)}={run_dir(*run)}" for run in geometry_runs()),
    shell:
        "esft drift --runs {params.runs} --series {output.series} --fits {output.fits} "
        "--params {output.params} --kinds {output.kinds} > {log} 2>&1"
