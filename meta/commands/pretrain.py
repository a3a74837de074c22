"""``maskpolicy-pretrain``: intermediate pre-training with a masking policy, then downstream QA.

compose config → set up task, tokenizer, model, policy → pre-train → score the held-out
text → fine-tune (epoch chosen on dev) → test → ``results.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from maskpolicy.meta.config import expose_hydra_plugins, modern_overrides, register_plugin_policies
from maskpolicy.meta.console import quiet_libraries
from maskpolicy.meta.pipeline import RunNames, run_pretraining
from maskpolicy.meta.results import schema
from maskpolicy.meta.results.files import disk_errors
from maskpolicy.meta.search.objectives import values as objective_values
from maskpolicy.meta.search.study import record
from maskpolicy.meta.search.sweep import (
    SweepError,
    check_command_line,
    linked_callbacks,
    linked_trial,
    run_objectives,
)
from maskpolicy.meta.training import check_single_job

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="pretrain")
def run(cfg: DictConfig) -> float | tuple[float, ...]:
    quiet_libraries()
    runtime = HydraConfig.get().runtime
    names = RunNames(*(runtime.choices.get(group, "custom") for group in ("policy", "task", "model")))
    output_dir = Path(runtime.output_dir)
    check_single_job(cfg.trainer, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    trial = linked_trial(cfg.get("optuna_trial"))  # a run launched by hydra/sweeper=maskpolicy_optuna
    results = run_pretraining(cfg, output_dir, names, test=True, callbacks=linked_callbacks(cfg, trial))
    if rank_zero_only.rank == 0:  # under trainer=ddp every rank runs this command; one writes
        with disk_errors(output_dir):
            schema.save(output_dir, results)
        if trial is not None:  # the sweep's trial keeps the same records a maskpolicy-search trial does
            record(trial, results)
    downstream = results.downstream
    log.info("%s on %s (%s): dev %s %.3f, test %s %.3f", names.policy, names.task, downstream.name,
             downstream.metric.upper(), downstream.dev_value, downstream.metric.upper(), downstream.test_value)
    # what a Hydra sweeper optimises: the downstream's own dev metric, or the objectives its sweep names
    return objective_values(run_objectives(cfg), results)


def main() -> None:
    register_plugin_policies()
    expose_hydra_plugins()
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    try:
        check_command_line(sys.argv[1:])
    except SweepError as error:
        sys.exit(f"maskpolicy-pretrain: {error}")
    run()


if __name__ == "__main__":
    main()
