"""A Lightning data module over pre-encoded rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from maskpolicy.tasks.text.encoding import pad_rows


class RowsDataModule(pl.LightningDataModule):
    """Serves already-tokenised rows (see :mod:`.text`), padded per batch.

    ``train`` is shuffled; ``dev`` and ``test`` are served in order. ``collate`` turns a list of
    rows into a batch (a downstream task's own, e.g. extractive QA's windows); by default
    :func:`~maskpolicy.tasks.text.encoding.pad_rows` with ``pad_token_id``.
    """

    def __init__(
        self,
        train: Sequence[dict],
        pad_token_id: int,
        dev: Sequence[dict] = (),
        test: Sequence[dict] = (),
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        collate: Callable[[Sequence[dict]], dict] | None = None,
    ) -> None:
        super().__init__()
        self.rows = {"train": list(train), "dev": list(dev), "test": list(test)}
        self.collate = collate if collate is not None else partial(pad_rows, pad_token_id=pad_token_id)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.rows[split], batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
