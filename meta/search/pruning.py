"""Optuna pruning for a ``pytorch_lightning`` fit: during fine-tuning and during pre-training.

Optuna's own Lightning callback (in ``optuna-integration``) is written for the
``lightning.pytorch`` namespace, a package this project neither installs nor mixes
with the ``pytorch_lightning`` it trains with.

Two callbacks report to one trial on one step axis: :class:`ProbePruning` reports the
pre-training probe at pre-training steps ``k, 2k, …``; :class:`OptunaPruning` reports the
objective's monitor after each fine-tuning epoch at step ``pretrain.steps + epoch``. A
pruner compares trials step by step, so each step holds one kind of value across trials.

How a pruned trial ends: when the pruner rejects a value, the callback asks the trainer
to stop (``trainer.should_stop``, as early stopping does), so checkpoints and logs are
written as usual; when the fit ends it raises :class:`optuna.TrialPruned`. Lightning
re-raises any exception from ``trainer.fit`` after calling ``on_exception`` hooks and
finalising its loggers, so ``study.optimize`` records the trial as pruned. ``min_epochs``
still holds: a trial pruned earlier trains until then. With several validations per
epoch (``val_check_interval`` < 1) Optuna keeps the first of each epoch. A pruned trial
never resumes: Optuna's multi-fidelity pruners (successive halving, Hyperband) decide at
each rung whether a running trial goes on, so a promoted trial simply keeps training.
"""

from __future__ import annotations

import optuna
import pytorch_lightning as pl
from optuna.study import StudyDirection

from maskpolicy.meta.scoring.probe import ScoreProbe
from maskpolicy.meta.search.engines import SearchConfigError

DIRECTIONS = {"max": StudyDirection.MAXIMIZE, "min": StudyDirection.MINIMIZE}


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` to the trial after every validation epoch and stops the fit if the pruner says so.

    Args:
        trial: the running trial (an ``optuna.trial.FixedTrial`` never prunes).
        monitor: the logged metric to report, e.g. ``"dev/em"``.
        mode: ``"max"`` or ``"min"``: which way the metric improves; it must match the study's direction.
        step_offset: added to the epoch to make the reported step, so that a trial that already
            reported pre-training steps 0 … ``step_offset`` − 1 keeps one increasing step axis.
    """

    def __init__(self, trial: optuna.trial.BaseTrial, monitor: str = "dev/em", mode: str = "max",
                 step_offset: int = 0) -> None:
        super().__init__()
        if mode not in DIRECTIONS:
            raise SearchConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        _check_direction(trial, monitor, DIRECTIONS[mode])
        self.trial, self.monitor, self.mode, self.step_offset = trial, monitor, mode, step_offset
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        if _report(self.trial, trainer, self._value(trainer), self.step_offset + trainer.current_epoch):
            self.pruned_at = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_at is not None:
            raise optuna.TrialPruned(f"trial pruned at epoch {self.pruned_at} ({self.monitor})")

    def _value(self, trainer: pl.Trainer) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise SearchConfigError(
                f"the pruning callback monitors {self.monitor!r}, which the model did not log; logged metrics: "
                f"{', '.join(sorted(metrics)) or 'none'}. Log it in validation_step or set monitor"
            )
        return float(metrics[self.monitor])


class ProbePruning(pl.Callback):
    """Pruning during pre-training: reports each value a :class:`~maskpolicy.meta.scoring.probe.ScoreProbe`
    measures (step = the pre-training step) and stops pre-training when the pruner gives the trial up.

    Values measured before ``start_fraction`` of pre-training are not reported: early in
    pre-training the probe can rank policies that learn slower but further (a learned
    policy masking only answer slots) below the others, measured in the README.
    The probe must come before this callback in the trainer's list (it measures in the same hook).
    Its score improves upwards, so the study must maximise.
    """

    def __init__(self, trial: optuna.trial.BaseTrial, probe: ScoreProbe, start_fraction: float = 0.0) -> None:
        super().__init__()
        _check_direction(trial, probe.name, StudyDirection.MAXIMIZE)
        if not 0.0 <= start_fraction < 1.0:
            raise SearchConfigError(f"search.pruning.start_fraction must be in [0, 1), got {start_fraction}")
        self.trial, self.probe, self.start_fraction = trial, probe, start_fraction
        self.pruned_at: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        value = self.probe.latest(step)
        if value is None or self.pruned_at is not None or step < self.start_fraction * trainer.max_steps:
            return
        if _report(self.trial, trainer, value, step):
            self.pruned_at = step

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_at is not None:
            raise optuna.TrialPruned(f"trial pruned at pre-training step {self.pruned_at} ({self.probe.name})")


def _report(trial: optuna.trial.BaseTrial, trainer: pl.Trainer, value: float, step: int) -> bool:
    """Reports ``value`` at ``step`` (from the process that owns the trial); True, with the fit told to stop, when the
    pruner gives the trial up. Every rank stops together."""
    should_prune = False
    if trainer.is_global_zero:
        trial.report(value, step=step)
        should_prune = trial.should_prune()
    if trainer.strategy.broadcast(should_prune, src=0):
        trainer.should_stop = True
        return True
    return False


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
