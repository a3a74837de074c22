"""Run by ``test_ddp.py`` as ``python ddp_ranks.py OUT STORAGE``: two CPU ranks (gloo) under Lightning's DDP.

Lightning's launcher re-runs this script for rank 1. Each rank writes ``OUT/rank-R.json``: where each
pruned fit stopped (the ranks are fed different values; only rank 0 holds the Optuna trial), and the
QA scores of a dev split that DDP splits across the ranks and pads with a repeated row.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import optuna
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from maskpolicy.meta.search.pruning import OptunaPruning, ProbePruning
from maskpolicy.tasks.base import QAExample
from maskpolicy.tasks.text.encoding import pad_rows
from maskpolicy.tasks.text.tokenization import train_wordpiece
from maskpolicy.tasks.training.metrics import qa_scores
from maskpolicy.tasks.training.models import ModelSpec
from maskpolicy.tasks.training.qa import QAFineTuning, encode_qa

RANK = int(os.environ.get("LOCAL_RANK", "0"))
PRUNED_BELOW = 0.5  # rank 0 falls below it (epoch 1, step 4); rank 1 never does


class Linear(pl.LightningModule):
    """One weight; logs ``dev/em`` = 0.9 on every rank but rank 0 from epoch 1 on (0.1)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("dev/em", 0.1 if RANK == 0 and self.current_epoch >= 1 else 0.9)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class FallingProbe:
    """A pre-training probe whose value every second step is 0.9, except rank 0's from step 4 on (0.1)."""

    name = "probe/answers"

    def latest(self, step: int) -> float | None:
        if step % 2:
            return None
        return 0.1 if RANK == 0 and step >= 4 else 0.9


def trainer(out: Path, **budget) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
                      num_sanity_val_steps=0, **budget)


def pruned_fit(fit: pl.Trainer, trial, study) -> dict:
    """Fits until the pruner stops every rank; rank 0 tells the study."""
    data = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=1)
    pruned = False
    try:
        fit.fit(Linear(), train_dataloaders=data, val_dataloaders=data)
    except optuna.TrialPruned:
        pruned = True
        if study is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return {"pruned": pruned, "epoch": fit.current_epoch, "step": fit.global_step}


def qa_under_ddp(out: Path) -> dict:
    """Dev scores of 5 rows over 2 ranks (DDP pads them to 6 with row 0) against a one-process reference."""
    sentences = ["ada was born in norvane", "bram studied chemistry", "cora works at the academy"]
    tokenizer = train_wordpiece(sentences, vocab_size=120)
    spec = ModelSpec(config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 64, "max_position_embeddings": 64}, max_length=64)
    torch.manual_seed(0)
    module = QAFineTuning(spec.build_model(tokenizer).eval(), tokenizer)
    examples = [QAExample(f"where was person {n} born ?", "norvane", f"person {n}") for n in range(5)]
    rows = encode_qa(examples, tokenizer, "masked_lm", 32)
    guesses = module.predict_answers(pad_rows(rows, tokenizer.pad_token_id))
    # rows 1 and 3 are answered right, the rest wrong: EM 2/5 over the split, 3/6 with row 0's repeat counted
    examples = [QAExample(e.question, guesses[n] if n in (1, 3) else "not-a-guess", e.subject)
                for n, e in enumerate(examples)]
    rows = encode_qa(examples, tokenizer, "masked_lm", 32)
    reference = qa_scores(module.predict_answers(pad_rows(rows, tokenizer.pad_token_id)),
                          [(e.answer,) for e in examples])
    trainer(out).validate(module, DataLoader(rows, batch_size=2, collate_fn=partial(pad_rows,
                                                                                   pad_token_id=tokenizer.pad_token_id)),
                          verbose=False)
    return {"reference": reference, "ddp": module.scores["dev"]}


def main(out: Path, storage: str) -> None:
    study = trials = None
    if RANK == 0:  # the process that owns the trials; the other rank never touches the study
        study = optuna.create_study(study_name="ddp", storage=storage, direction="maximize",
                                    pruner=optuna.pruners.ThresholdPruner(lower=PRUNED_BELOW))
        trials = [study.ask(), study.ask()]
    fixed = optuna.trial.FixedTrial({})
    probe_trial, epoch_trial = trials or (fixed, fixed)
    record = {
        "probe": pruned_fit(trainer(out, max_steps=20, callbacks=[ProbePruning(probe_trial, FallingProbe())]),
                            probe_trial, study),
        "epochs": pruned_fit(trainer(out, max_epochs=6, callbacks=[OptunaPruning(epoch_trial, "dev/em")]),
                             epoch_trial, study),
        "qa": qa_under_ddp(out),
        "world_size": torch.distributed.get_world_size(),
    }
    (out / f"rank-{RANK}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
