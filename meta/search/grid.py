"""The grid search's sampler: every combination of the space's grid values, each run once even when several
workers share the study and trials die."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from maskpolicy.meta.search.space import SearchSpace, grid


class SharedGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for a study that several workers share and whose trials can die.

    Optuna counts a point as visited once any trial on it has finished, failed included: a point whose trial
    failed with no retry (a surplus trial, a trial whose retries ran out) would never run, and once every point
    has been started a new trial is handed one that is still running, which then runs twice. Here a point is
    taken only by a trial that completed, was pruned, is running or is queued on it; a trial handed a taken
    point anyway (every point taken) is refused as surplus by :class:`.faults.TrialBudget`. This overrides
    Optuna's private ``_get_unvisited_grid_ids`` (what both ``before_trial`` and ``after_trial`` consult),
    because the public sampler has no option for it.
    """

    def _get_unvisited_grid_ids(self, study: optuna.Study) -> list[int]:
        taken = {trial.system_attrs["grid_id"] for trial in study._storage.get_all_trials(study._study_id,
                                                                                        deepcopy=False)
                 if trial.state != TrialState.FAIL and "grid_id" in trial.system_attrs
                 and self._same_search_space(trial.system_attrs["search_space"])}
        return [point for point in range(self._n_min_trials) if point not in taken]


def grid_sampler(space: Mapping[str, Any], seed: int | None = None) -> optuna.samplers.GridSampler:
    """A :class:`SharedGridSampler` over the values :func:`.space.grid` lists for ``space`` (a search-space
    config)."""
    return SharedGridSampler(grid(SearchSpace.from_config(space, check=False)), seed=seed)
