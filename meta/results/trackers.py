"""Experiment trackers as Lightning loggers: MLflow (a store under the run directory) and Weights & Biases (offline).

``make_trainer`` builds every configured logger with ``save_dir`` (the run directory), ``name``
(the stage: ``pretrain``, ``finetune``, ``base``) and ``version``. The CSV and TensorBoard
loggers take those arguments as they are; these two factories map them onto what MLflow and
W&B mean by a store and a run, so that ``logger=[csv,mlflow]`` or ``logger=[csv,wandb]`` needs
no other change:

- **MLflow**: one store per run directory, ``<run>/mlruns`` (MLflow's file store), one
  experiment (``maskpolicy``) and one MLflow run per stage, named after it and tagged with the
  stage and the run directory. MLflow 3 reads and writes a file store only with
  ``MLFLOW_ALLOW_FILE_STORE=true`` (set here for the default store; a reader sets it too), e.g.
  ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <run>/mlruns`` (the UI is the full
  ``mlflow`` package's; the extra installs ``mlflow-skinny``, the client). A ``tracking_uri``
  (``sqlite:///…``, ``http://…``) gathers many runs in one place instead.
- **W&B**: offline by default, files under ``<run>/wandb/offline-run-*`` (``wandb sync`` uploads
  them later); one W&B run per stage (``name`` and ``job_type`` are the stage). A stage's run is
  finished when the next stage's logger starts (Lightning's logger would otherwise log the next
  stage into it); a run the user started before the command is reused, as Lightning does.

Both packages are optional (``pip install 'maskpolicy[trackers]'``; ``make install`` puts them in
the development environment); a missing one is a :class:`~maskpolicy.meta.config.ConfigError`
naming that command.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger  # imports without wandb; it is needed only to log

from maskpolicy.meta.config import ConfigError

TRACKERS_INSTALL = "pip install 'maskpolicy[trackers]'"
_STAGE_RUNS: set[str] = set()  # ids of the W&B runs a stage logger of this process started


class StageWandbLogger(WandbLogger):
    """A ``WandbLogger`` that starts its own W&B run: a run an earlier stage's logger started is finished first."""

    @property
    def experiment(self):
        import wandb

        if self._experiment is None and wandb.run is not None and wandb.run.id in _STAGE_RUNS:
            wandb.run.finish()
        run = WandbLogger.experiment.fget(self)
        run_id = getattr(run, "id", None)
        if isinstance(run_id, str):  # not the placeholder other ranks get
            _STAGE_RUNS.add(run_id)
        return run


def tracker_missing(module: str) -> str:
    """Why the tracker ``module`` (``mlflow`` or ``wandb``) cannot be used (the fix included), or ``""``."""
    if importlib.util.find_spec(module) is None:
        return (f"logger={module} needs the {module} package, which is not installed: {TRACKERS_INSTALL} "
                "(`make install` installs it in the development environment)")
    return ""


def _require(module: str) -> None:
    problem = tracker_missing(module)
    if problem:
        raise ConfigError(problem)


def mlflow_logger(save_dir: str, name: str, version: str = "", experiment: str = "maskpolicy",
                  tracking_uri: str | None = None, tags: Mapping[str, Any] | None = None, **options: Any):
    """A Lightning ``MLFlowLogger`` for one stage of a run.

    Args:
        save_dir: the run directory; the store is ``<save_dir>/mlruns`` unless ``tracking_uri`` is given.
        name: the stage; the MLflow run's name and its ``stage`` tag.
        version: not used (MLflow gives every run its own id); accepted for ``make_trainer``'s call.
        experiment: the MLflow experiment the stage's run goes to (created if missing).
        tracking_uri: another store or server (``sqlite:///path.db``, ``http://host:5000``); None: the run's own.
        tags: more tags for the run (values are written as text).
        options: any other ``MLFlowLogger`` argument (``log_model``, ``artifact_location``, ``run_id``, ...).
    """
    _require("mlflow")
    from pytorch_lightning.loggers import MLFlowLogger

    del version
    uri = tracking_uri or (Path(save_dir).resolve() / "mlruns").as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance and refuses it unless this is set; it is the store this
        # logger was asked for (a plain folder in the run directory), so it opts in unless the user decided already
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    run_tags = {"stage": name, "run_dir": str(Path(save_dir).resolve()), **{k: str(v) for k, v in (tags or {}).items()}}
    return MLFlowLogger(experiment_name=experiment, run_name=name, tracking_uri=uri, tags=run_tags, **options)


def wandb_logger(save_dir: str, name: str, version: str = "", project: str = "maskpolicy", mode: str = "offline",
                 **options: Any):
    """A Lightning ``WandbLogger`` for one stage of a run, offline unless ``mode`` says otherwise.

    Args:
        save_dir: the run directory; W&B writes ``<save_dir>/wandb/``.
        name: the stage; the W&B run's name and job type.
        version: a W&B run id to resume; ``""`` (what ``make_trainer`` passes): a new run.
        project: the W&B project.
        mode: ``offline`` (files only; ``wandb sync`` uploads them), ``online`` (needs a login) or ``disabled``.
        options: any other ``WandbLogger`` or ``wandb.init`` argument (``entity``, ``group``, ``tags``, ...).
    """
    _require("wandb")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    options.setdefault("job_type", name)
    return StageWandbLogger(name=name, save_dir=save_dir, version=version or None, project=project, mode=mode,
                            **options)
