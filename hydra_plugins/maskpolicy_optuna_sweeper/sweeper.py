"""``hydra/sweeper=maskpolicy_optuna``, the adapter Hydra finds: the sweep itself is
:class:`maskpolicy.meta.search.sweeper.OptunaSweep`, imported only when a sweep chooses this sweeper (Hydra imports
every plugin module whenever any Hydra app starts, and the search imports torch and Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MaskpolicyOptunaSweeper(Sweeper):
    """Runs an Optuna study's trials through the configured Hydra launcher (options: ``config.py``)."""

    def __init__(self, **options: Any) -> None:
        from maskpolicy.meta.search.sweeper import OptunaSweep

        self.sweep_of = OptunaSweep(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweep_of.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        return self.sweep_of.sweep(arguments)
