"""The sweeper's options (``hydra.sweeper.*``), stored for Hydra as ``hydra/sweeper=maskpolicy_optuna``."""
# no `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, which dataclasses need

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class MaskpolicyOptunaSweeperConf:
    _target_: str = "hydra_plugins.maskpolicy_optuna_sweeper.sweeper.MaskpolicyOptunaSweeper"
    _recursive_: bool = False         # a sampler or pruner mapping is built by the sweeper, seeded, not by Hydra
    sampler: Any = "tpe"              # a name from conf/search/sampler/ (not grid), or a mapping with a _target_
    pruner: Any = "median"            # a name from conf/search/pruner/, or a mapping with a _target_
    storage: Any = None               # null: SQLite study.db in the sweep directory; sqlite:///…, postgresql://…
    study_name: str = "maskpolicy_sweep"   # the same name and storage again continue the study
    n_trials: int = 20                # finished (complete or pruned) trials the study should hold
    n_jobs: int = 1                   # trials launched together (the launcher runs them side by side)
    seed: int = 0                     # the sampler's seed
    max_consecutive_failures: int = 3   # runs in a row that fail stop the sweep, naming their error; 0: never
    heartbeat_interval: int = 30      # seconds; the sweeper beats for the runs it launched (a database storage) …
    grace_period: int = 90            # … so a sweep killed mid-batch leaves trials that the next one fails …
    max_retry: int = 3                # … and runs again, at most this many times
    pruning_start_fraction: float = 0.5    # with pretrain.probe.every > 0: probes before this share are not reported
    params: dict[str, str] = field(default_factory=dict)   # key: sweep expression, joined to the command line's


ConfigStore.instance().store(group="hydra/sweeper", name="maskpolicy_optuna", node=MaskpolicyOptunaSweeperConf,
                             provider="maskpolicy")
