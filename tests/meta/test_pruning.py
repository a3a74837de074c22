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
from maskpolicy.meta.search.pruning import OptunaPruning

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
