rule evaluate_base:
    input:
        base=f"{R}/model/base",
        data=test_files(),
    output:
        metrics=f"{R}/eval/base/accuracy.json",
        completions=f"{R}/eval/base/completions.jsonl",
    log:
        f"{LOGS}/evaluate/base.log",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=js(accuracy_config()),
        tasks_cfg=js(config["tasks"]),
        data=" ".join(f"{t}={R}/data/{t}" for t in task_names()),
        runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
    shell:
        "esft --threads {threads} evaluate --base {input.base} {params.runtime} "
        "--data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} "
        "--out {output.metrics} > {log} 2>&1"


if run_names():

    # every trained checkpoint of one seed in one job (start-up paid once per seed)
    rule evaluate:
        input:
            base=f"{R}/model/base",
            weights=seed_weights,
            data=test_files(),
        output:
            metrics=[f"{R}/eval/seed-{{seed}}/{name}/accuracy.json" for name in run_names()],
            completions=[f"{R}/eval/seed-{{seed}}/{name}/completions.jsonl" for name in run_names()],
        log:
            f"{LOGS}/evaluate/seed-{{seed}}.log",
        conda:
            "../../envs/esft.yaml"
        threads: RUNTIME["threads"]
        params:
            cfg=js(accuracy_config()),
            tasks_cfg=js(config["tasks"]),
            data=" ".join(f"{t}={R}/data/{t}" for t in task_names()),
            runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
        shell:
            "esft --threads {threads} evaluate --base {input.base} --weights {input.weights} {params.runtime} "
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


if run_names():

    # KL after every stage of one seed, to the base and to the previous stage, in one job
    rule kl:
        input:
            base=f"{R}/model/base",
            weights=seed_weights,
            data=test_files(),
        output:
            metrics=[f"{R}/eval/seed-{{seed}}/{name}/kl_{reference}.json" for name, reference, _ in kl_jobs()],
            completions=[
                f"{R}/eval/seed-{{seed}}/{name}/kl_{reference}_completions.jsonl" for name, reference, _ in kl_jobs()
            ],
        log:
            f"{LOGS}/kl/seed-{{seed}}.log",
        conda:
            "../../envs/esft.yaml"
        threads: RUNTIME["threads"]
        params:
            cfg=js(config["evaluate"]["kl"]),
            tasks_cfg=js(config["tasks"]),
            data=" ".join(f"{t}={R}/data/{t}" for t in task_names()),
            runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
            reference=kl_reference_args,
            weights=lambda w: " ".join(
                f"{R}/train/seed-{w.seed}/{name}/weights.safetensors" for name, _, _ in kl_jobs()
            ),
        shell:
            "esft --threads {threads} kl --base {input.base} --reference {params.reference} --weights {params.weights} "
            "{params.runtime} --data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} "
            "--completions {output.completions} --out {output.metrics} > {log} 2>&1"


rule collect_kl:
    input:
        sorted({path for _, _, path in kl_pairs()}),
    output:
        f"{R}/eval/kl.csv",
    log:
        f"{LOGS}/collect_kl.log",
    conda:
        "../../envs/esft.yaml"
    params:
        pairs=" ".join(f"{label}:{reference}={path}" for label, reference, path in kl_pairs()),
    shell:
        "esft collect-kl --pairs {params.pairs} --out {output} > {log} 2>&1"


rule holdout_data:
    output:
        rows=f"{R}/holdout/data/{{benchmark}}.jsonl",
        manifest=f"{R}/holdout/data/{{benchmark}}.manifest.json",
    log:
        f"{LOGS}/holdout_data/{{benchmark}}.log",
    wildcard_constraints:
        benchmark="mmlu|ifeval",
    conda:
        "../../envs/esft.yaml"
    params:
        cfg=lambda w: js(HOLDOUT["benchmarks"][w.benchmark]),
    shell:
        "esft holdout-data --benchmark {wildcards.benchmark} --cfg {params.cfg:q} --out {output.rows} > {log} 2>&1"


rule nltk_data:
    output:
        directory(f"{R}/holdout/nltk_data"),
    log:
        f"{LOGS}/nltk_data.log",
    conda:
        "../../envs/esft.yaml"
    shell:
        "esft nltk-data --out {output} > {log} 2>&1"


rule holdout_base:
    input:
        unpack(holdout_inputs),
        base=f"{R}/model/base",
    output:
        record=f"{R}/holdout/base/{{benchmark}}.json",
        samples=f"{R}/holdout/base/{{benchmark}}.samples.jsonl",
    log:
        f"{LOGS}/holdout/base/{{benchmark}}.log",
    wildcard_constraints:
        benchmark="mmlu|ifeval",
    conda:
        "../../envs/esft.yaml"
    threads: RUNTIME["threads"]
    params:
        cfg=lambda w: js(HOLDOUT["benchmarks"][w.benchmark]),
        runtime=lambda w: f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']} --batch-size {HOLDOUT['batch_size']}",
        data=lambda w, input: f"--data {input.data}" if "data" in input.keys() else "",
        nltk=lambda w, input: f"--nltk-data {input.nltk_data}" if "nltk_data" in input.keys() else "",
        tasks_dir=LM_EVAL_TASKS,
    shell:
        "esft --threads {threads} holdout --base {input.base} {params.runtime} "
        "--benchmark {wildcards.benchmark} --cfg {params.cfg:q} {params.data} {params.nltk} "
        "--tasks-dir {params.tasks_dir} --out {output.record} > {log} 2>&1"


if HOLDOUT and holdout_names():

    # the holdout checkpoints of one seed in one job per benchmark
    rule holdout:
        input:
            unpack(holdout_inputs),
            base=f"{R}/model/base",
            weights=lambda w: [f"{R}/train/seed-{w.seed}/{name}/weights.safetensors" for name in holdout_names()],
        output:
            record=[f"{R}/holdout/seed-{{seed}}/{name}/{{benchmark}}.json" for name in holdout_names()],
            samples=[f"{R}/holdout/seed-{{seed}}/{name}/{{benchmark}}.samples.jsonl" for name in holdout_names()],
        log:
            f"{LOGS}/holdout/seed-{{seed}}/{{benchmark}}.log",
        wildcard_constraints:
            benchmark="mmlu|ifeval",
        conda:
            "../../envs/esft.yaml"
        threads: RUNTIME["threads"]
        params:
            cfg=lambda w: js(HOLDOUT["benchmarks"][w.benchmark]),
            runtime=lambda w: f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']} --batch-size {HOLDOUT['batch_size']}",
            data=lambda w, input: f"--data {input.data}" if "data" in input.keys() else "",
            nltk=lambda w, input: f"--nltk-data {input.nltk_data}" if "nltk_data" in input.keys() else "",
            tasks_dir=LM_EVAL_TASKS,
        shell:
            "esft --threads {threads} holdout --base {input.base} --weights {input.weights} {params.runtime} "
            "--benchmark {wildcards.benchmark} --cfg {params.cfg:q} {params.data} {params.nltk} "
            "--tasks-dir {params.tasks_dir} --out {output.record} > {log} 2>&1"


rule collect_holdout:
    input:
        list(holdout_records().values()),
    output:
        f"{R}/eval/holdout.csv",
    log:
        f"{LOGS}/collect_holdout.log",
    conda:
        "../../envs/esft.yaml"
    params:
        records=" ".join(f"{key}={path}" for key, path in holdout_records().items()),
    shell:
        "esft collect-holdout --results {params.records} --out {output} > {log} 2>&1"


if lora_runs():

    # ES with LoRA: each study run of one seed evaluated along training (weights replayed from run.jsonl)
    rule test_curve:
        input:
            base=f"{R}/model/base",
            runs=lambda w: [f"{R}/train/seed-{w.seed}/{name}/run.jsonl" for name in lora_names()],
            data=[f"{R}/data/{t}/test.jsonl" for t in lora_study()],
        output:
            [f"{R}/eval/seed-{{seed}}/{name}/test_curve.jsonl" for name in lora_names()],
        log:
            f"{LOGS}/test_curve/seed-{{seed}}.log",
        conda:
            "../../envs/esft.yaml"
        threads: RUNTIME["threads"]
        params:
            cfg=test_curve_cfg(),
            tasks_cfg=js({t: config["tasks"][t] for t in lora_study()}),
            data=" ".join(f"{t}={R}/data/{t}" for t in lora_study()),
            runtime=f"--device {RUNTIME['device']} --dtype {RUNTIME['dtype']}",
        shell:
            "esft --threads {threads} test-curve --base {input.base} --runs {input.runs} {params.runtime} "
            "--data {params.data} --tasks-cfg {params.tasks_cfg:q} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


# ES with LoRA: the mean test reward along each study run with its best iteration, and each test prompt's
# reward there (and the base's), recomputed from the completions
rule collect_prompt_rewards:
    input:
        base=f"{R}/eval/base/completions.jsonl",
        curves=[f"{R}/eval/{run_label(*run)}/test_curve.jsonl" for run in lora_runs()],
        data=[f"{R}/data/{t}/test.jsonl" for t in lora_study()],
    output:
        curves=f"{R}/eval/lora_test_curves.csv",
        rewards=f"{R}/eval/lora_prompt_rewards.csv",
    log:
        f"{LOGS}/collect_prompt_rewards.log",
    conda:
        "../../envs/esft.yaml"
    params:
        curves=" ".join(f"{run_label(*run)}={R}/eval/{run_label(*run)}/test_curve.jsonl" for run in lora_runs()),
        data=" ".join(f"{t}={R}/data/{t}" for t in lora_study()),
        tasks_cfg=js({t: config["tasks"][t] for t in lora_study()}),
    shell:
        "esft prompt-rewards --base {input.base} --curves {params.curves} --data {params.data} "
        "--tasks-cfg {params.tasks_cfg:q} --curve-out {output.curves} --out {output.rewards} > {log} 2>&1"
