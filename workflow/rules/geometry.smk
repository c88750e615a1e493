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
