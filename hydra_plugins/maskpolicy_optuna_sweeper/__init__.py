"""``hydra/sweeper=maskpolicy_optuna``: an Optuna study behind ``maskpolicy-pretrain -m``, with this project's
samplers, pruners and storages; the runs it launches report to their trial, so the pruner can stop them."""
