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
from omegaconf import DictConfig

from maskpolicy.meta.config import modern_overrides, register_plugin_policies
from maskpolicy.meta.pipeline import RunNames, run_pretraining
from maskpolicy.meta.results import schema

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="pretrain")
def run(cfg: DictConfig) -> float:
    runtime = HydraConfig.get().runtime
    names = RunNames(*(runtime.choices.get(group, "custom") for group in ("policy", "task", "model")))
    output_dir = Path(runtime.output_dir)
    results = run_pretraining(cfg, output_dir, names, test=True)
    schema.save(output_dir, results)
    log.info("%s on %s: dev EM %.3f, test EM %.3f", names.policy, names.task, results.downstream.dev_em,
             results.downstream.test_em)
    return results.downstream.dev_em


def main() -> None:
    register_plugin_policies()
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
