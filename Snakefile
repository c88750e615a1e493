# esft: ES vs GRPO vs LBES fine-tuning, from data to figures. See README.md.
import sys
from pathlib import Path

from esft.config import ConfigError, validate_config

# The embedded default applies only without --configfile: a given config file replaces it whole rather
# than being merged key by key into it (later --configfile files still layer on the first).
if not workflow.overwrite_configfiles:

    configfile: Path(workflow.basedir) / "config/config.yaml"


try:
    validate_config(config, workflow.source_path("config/schema.yaml"))
except ConfigError as err:
    sys.exit(str(err))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/budgets.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
        study_targets(),
