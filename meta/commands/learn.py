"""``maskpolicy-learn`` (also ``maskpolicy-meta``): train a learned masking policy and save it as an artifact.

Reads straight through: compose config → :func:`~maskpolicy.meta.learning.train.learn_policy`
(``learning.method=supervised``: predict answer spans; ``learning.method=meta_learning``:
meta-learn through differentiable inner updates of the language model; either is judged
against held-out answer spans next to ``entity`` and ``random``) → write ``results.json``
next to ``policy/`` (use it with ``policy=artifact policy.path=…/policy``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskpolicy.meta.config import modern_overrides
from maskpolicy.meta.console import quiet_libraries
from maskpolicy.meta.learning.train import ARTIFACT, learn_policy
from maskpolicy.meta.results.schema import save

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="learn")
def learn(cfg: DictConfig) -> float:
    quiet_libraries()
    runtime = HydraConfig.get().runtime
    output_dir = Path(runtime.output_dir)
    results = learn_policy(cfg, output_dir, runtime.choices.get("task", "custom"))
    save(output_dir, results)
    learned, entity = results.evaluation.learned, results.evaluation.entity
    log.info("%s policy on %s: masked-token precision %.3f / recall %.3f (entity %.3f / %.3f); saved to %s",
             results.method, results.task.name, learned.precision, learned.recall, entity.precision, entity.recall,
             output_dir / ARTIFACT)
    return learned.recall


def main() -> None:
    # Hydra reads sys.argv itself; earlier releases' keys (meta.*, meta.meta.*) are renamed before it does
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    learn()


if __name__ == "__main__":
    main()
