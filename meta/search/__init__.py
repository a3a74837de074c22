"""The Optuna search over masking policies: its space, engines and pruning callback."""
