"""Optuna pruning for a ``pytorch_lightning`` fit.

Optuna's own Lightning callback (in ``optuna-integration``) is written for the
``lightning.pytorch`` namespace, a package this project neither installs nor mixes
with the ``pytorch_lightning`` it trains with.

How a pruned trial ends: after a validation epoch whose value the pruner rejects, the
callback asks the trainer to stop (``trainer.should_stop``, as early stopping does), so
the epoch's checkpoints and logs are written as usual; when the fit ends it raises
:class:`optuna.TrialPruned`. Lightning re-raises any exception from ``trainer.fit``
after calling ``on_exception`` hooks and finalising its loggers (status ``"failed"``; the
``teardown`` hooks do not run), so ``study.optimize`` records the trial as pruned. ``min_epochs`` still holds: a trial
pruned earlier trains until then. The step reported is the epoch; with several
validations per epoch (``val_check_interval`` < 1) Optuna keeps the first of each epoch.
"""

from __future__ import annotations

import optuna
import pytorch_lightning as pl
from optuna.study import StudyDirection

from maskpolicy.meta.search.engines import SearchConfigError

DIRECTIONS = {"max": StudyDirection.MAXIMIZE, "min": StudyDirection.MINIMIZE}


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` to the trial after every validation epoch and stops the fit if the pruner says so.

    Args:
        trial: the running trial (an ``optuna.trial.FixedTrial`` never prunes).
        monitor: the logged metric to report, e.g. ``"dev/em"``.
        mode: ``"max"`` or ``"min"``: which way the metric improves; it must match the study's direction.
    """

    def __init__(self, trial: optuna.trial.BaseTrial, monitor: str = "dev/em", mode: str = "max") -> None:
        super().__init__()
        if mode not in DIRECTIONS:
            raise SearchConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        _check_direction(trial, monitor, DIRECTIONS[mode])
        self.trial, self.monitor, self.mode = trial, monitor, mode
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_epoch is not None:
            return
        epoch = trainer.current_epoch
        should_prune = False
        if trainer.is_global_zero:  # one report per epoch, from the process that owns the trial
            self.trial.report(self._value(trainer), step=epoch)
            should_prune = self.trial.should_prune()
        if trainer.strategy.broadcast(should_prune, src=0):
            self.pruned_epoch = epoch
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_epoch is not None:
            raise optuna.TrialPruned(f"trial pruned at epoch {self.pruned_epoch} ({self.monitor})")

    def _value(self, trainer: pl.Trainer) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise SearchConfigError(
                f"the pruning callback monitors {self.monitor!r}, which the model did not log; logged metrics: "
                f"{', '.join(sorted(metrics)) or 'none'}. Log it in validation_step or set monitor"
            )
        return float(metrics[self.monitor])


def _check_direction(trial: optuna.trial.BaseTrial, monitor: str, direction: StudyDirection) -> None:
    """A study that minimises a metric that improves upwards would prune the best trials."""
    study = getattr(trial, "study", None)
    if study is None:  # FixedTrial and friends have no study and never prune
        return
    if len(study.directions) != 1:
        raise SearchConfigError("Optuna prunes single-objective studies only; use pruner none with several objectives")
    if study.direction != direction:
        wanted = "maximize" if direction == StudyDirection.MAXIMIZE else "minimize"
        raise SearchConfigError(
            f"{monitor!r} improves with mode={'max' if wanted == 'maximize' else 'min'}, but the study's direction "
            f"is {study.direction.name.lower()}; create the study with direction={wanted!r}"
        )
