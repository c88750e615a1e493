"""GRPO as a training method: TRL's GRPOTrainer (`trainer`) and the job's memory plan (`memory`)."""
