"""The sweeper's options (``hydra.sweeper.*``), stored for Hydra as ``hydra/sweeper=maskpolicy_optuna``, with the
project's samplers and pruners as the groups ``hydra/sweeper/sampler`` and ``hydra/sweeper/pruner``."""
# no `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, which dataclasses need

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from maskpolicy.meta.search.choices import KINDS, names, sweep_option


@dataclass
class MaskpolicyOptunaSweeperConf:
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    _target_: str = "hydra_plugins.maskpolicy_optuna_sweeper.sweeper.MaskpolicyOptunaSweeper"
    _recursive_: bool = False         # a sampler or pruner mapping is built by the sweeper, seeded, not by Hydra
    sampler: Any = MISSING            # hydra/sweeper/sampler=<name of conf/search/sampler/>; or a name or a mapping
    pruner: Any = MISSING             # hydra/sweeper/pruner=<name of conf/search/pruner/>; or a name or a mapping
    direction: Any = None             # minimize | maximize, or a list (several objectives); null: see objectives
    objectives: Any = None            # maskpolicy-pretrain runs: names of registered objectives (dev, dev_em, mll …)
    storage: Any = None               # null: SQLite study.db in the sweep directory; sqlite:///…, postgresql://…
    study_name: str = "maskpolicy_sweep"   # the same name and storage again continue the study
    n_trials: int = 20                # finished (complete or pruned) trials the study should hold
    n_jobs: int = 1                   # trials launched together (the launcher runs them side by side)
    seed: int = 0                     # the sampler's seed when hydra.sweeper.sampler.seed is null
    max_failure_rate: Any = None      # a batch whose share of failed runs exceeds it stops the sweep; null: unchecked
    max_consecutive_failures: int = 3   # runs in a row that fail stop the sweep, naming their error; 0: never
    heartbeat_interval: int = 30      # seconds; the sweeper beats for the runs it launched (a database storage) …
    grace_period: int = 90            # … so a sweep killed mid-batch leaves trials that the next one fails …
    max_retry: int = 3                # … and runs again, at most this many times
    pruning_start_fraction: float = 0.5    # with pretrain.probe.every > 0: probes before this share are not reported
    params: dict[str, str] = field(default_factory=dict)   # key: sweep expression, joined to the command line's
    custom_search_space: Any = None   # "module.function" called as function(cfg, trial) after params are drawn


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="maskpolicy_optuna", node=MaskpolicyOptunaSweeperConf, provider="maskpolicy")
for _kind in KINDS:
    for _name in names(_kind):
        store.store(group=f"hydra/sweeper/{_kind}", name=_name, node=sweep_option(_kind, _name), provider="maskpolicy")
