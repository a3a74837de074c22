"""The Optuna pruning callback on a real (tiny) ``pytorch_lightning`` fit."""

from __future__ import annotations

import csv

import optuna
import pytest
import pytorch_lightning as pl
import torch
from optuna.trial import TrialState
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from maskpolicy.meta.search.engines import SearchConfigError
from maskpolicy.meta.search.pruning import OptunaPruning, ProbePruning

optuna.logging.set_verbosity(optuna.logging.WARNING)
SANITY_VALUE = -1.0  # what the sanity check logs: a report of it would be pruned at once


class LinearModel(pl.LightningModule):
    """A linear regression that logs a scripted ``dev/em``: 0.5, 0.4, 0.3, … by epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch, batch_idx):
        value = SANITY_VALUE if self.trainer.sanity_checking else 0.5 - 0.1 * self.current_epoch
        self.log("dev/em", value, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(16, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, inputs.sum(1, keepdim=True)), batch_size=8)


def fit(trial, tmp_path, max_epochs: int = 8, monitor: str = "dev/em") -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=CSVLogger(tmp_path, name="fit", version=""),
        callbacks=[OptunaPruning(trial, monitor=monitor), ModelCheckpoint(tmp_path / "ckpt", save_last=True)],
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(LinearModel(), train_dataloaders=loader(), val_dataloaders=loader())
    return trainer


def test_a_trial_is_pruned_at_the_first_epoch_below_the_threshold(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.25))
    study.optimize(lambda trial: fit(trial, tmp_path).callback_metrics["dev/em"].item(), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == pytest.approx({0: 0.5, 1: 0.4, 2: 0.3, 3: 0.2})  # no sanity-check value


def test_a_pruned_fit_still_writes_its_logs_and_last_checkpoint(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.25))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 3"):
        fit(trial, tmp_path)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3
    with open(tmp_path / "fit" / "metrics.csv") as file:
        logged = [float(row["dev/em"]) for row in csv.DictReader(file) if row["dev/em"]]
    assert logged == pytest.approx([0.5, 0.4, 0.3, 0.2])


def test_an_unpruned_trial_completes_with_every_epoch_reported(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=-10.0))
    study.optimize(lambda trial: fit(trial, tmp_path, max_epochs=3).callback_metrics["dev/em"].item(), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert sorted(study.trials[0].intermediate_values) == [0, 1, 2]


def test_a_fixed_trial_never_prunes(tmp_path):
    trainer = fit(optuna.trial.FixedTrial({}), tmp_path, max_epochs=2)
    assert trainer.current_epoch == 2


def test_a_missing_monitor_lists_the_logged_metrics(tmp_path):
    study = optuna.create_study(direction="maximize")
    with pytest.raises(SearchConfigError, match=r"monitors 'dev/f1', which the model did not log; logged metrics: dev"):
        study.optimize(lambda trial: fit(trial, tmp_path, max_epochs=1, monitor="dev/f1").current_epoch, n_trials=1)
    assert study.trials[0].state == TrialState.FAIL


def test_a_study_going_the_other_way_is_refused_before_training():
    study = optuna.create_study(direction="minimize")
    with pytest.raises(SearchConfigError, match="create the study with direction='maximize'"):
        OptunaPruning(study.ask(), monitor="dev/em", mode="max")
    with pytest.raises(SearchConfigError, match="mode must be 'max' or 'min'"):
        OptunaPruning(study.ask(), mode="maximise")


class ScriptedProbe:
    """Stands in for a ScoreProbe: a value every 2 steps, falling by 0.1 each time (0.5, 0.4, 0.3, …)."""

    name = "probe/entities"

    def latest(self, step: int) -> float | None:
        return 0.6 - 0.05 * step if step and step % 2 == 0 else None


def step_trainer(callbacks, tmp_path, max_steps: int = 20) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, default_root_dir=tmp_path)


def fit_steps(trainer: pl.Trainer) -> pl.Trainer:
    trainer.fit(LinearModel(), train_dataloaders=DataLoader(loader().dataset, batch_size=2))  # 8 steps an epoch
    return trainer


def test_pre_training_is_pruned_at_the_first_probe_below_the_threshold_and_stops_there(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.35))
    trial = study.ask()
    trainer = step_trainer([ProbePruning(trial, ScriptedProbe())], tmp_path)
    with pytest.raises(optuna.TrialPruned, match="pruned at pre-training step 6 \\(probe/entities\\)"):
        fit_steps(trainer)
    assert study.trials[0].intermediate_values == pytest.approx({2: 0.5, 4: 0.4, 6: 0.3})
    assert trainer.global_step == 6  # stopped there, in the middle of an epoch, not at the budget of 20


def test_an_unpruned_pre_training_reports_every_probe_and_runs_to_its_budget(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=-10.0))
    trial = study.ask()
    trainer = fit_steps(step_trainer([ProbePruning(trial, ScriptedProbe())], tmp_path, max_steps=10))
    assert trainer.global_step == 10 and sorted(study.trials[0].intermediate_values) == [2, 4, 6, 8, 10]


def test_fine_tuning_reports_after_the_pre_training_steps(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[OptunaPruning(trial, "dev/em", "max", step_offset=100)])
    trainer.fit(LinearModel(), train_dataloaders=loader(), val_dataloaders=loader())
    assert study.trials[0].intermediate_values == pytest.approx({100: 0.5, 101: 0.4})


def test_a_minimising_study_cannot_be_pruned_on_the_probe():
    with pytest.raises(SearchConfigError, match="create the study with direction='maximize'"):
        ProbePruning(optuna.create_study(direction="minimize").ask(), ScriptedProbe())


def test_probe_values_before_the_start_fraction_are_not_reported(tmp_path):
    """Half of 20 steps: the values at 2..8 (0.5..0.2, below the threshold) are measured but never judged."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.35))
    trial = study.ask()
    trainer = step_trainer([ProbePruning(trial, ScriptedProbe(), start_fraction=0.5)], tmp_path)
    with pytest.raises(optuna.TrialPruned, match="pruned at pre-training step 10"):
        fit_steps(trainer)
    assert study.trials[0].intermediate_values == pytest.approx({10: 0.1})


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_start_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(SearchConfigError, match=r"start_fraction must be in \[0, 1\)"):
        ProbePruning(optuna.create_study(direction="maximize").ask(), ScriptedProbe(), start_fraction=fraction)
