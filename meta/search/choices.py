"""The samplers and pruners of ``conf/search/sampler/`` and ``conf/search/pruner/`` by name, as a Hydra sweep takes
them (``hydra/sweeper/sampler=tpe``). Light on purpose: the sweeper plugin's config module reads it whenever any
Hydra app starts, so it imports neither torch nor the search."""

from __future__ import annotations

from importlib import resources
from typing import Any

from omegaconf import OmegaConf

KINDS = ("sampler", "pruner")
# a sweep's grid sampler searches the sweep's own grid (every swept key's values), which the sweeper gives it; the
# search's grid.yaml reads its grid from search.space instead
GRID_SAMPLER = {"_target_": "optuna.samplers.GridSampler", "seed": None}
GRID_TARGETS = (GRID_SAMPLER["_target_"], "maskpolicy.meta.search.grid.grid_sampler")


def names(kind: str) -> list[str]:
    """The config names of one kind (``sampler`` or ``pruner``)."""
    folder = resources.files("maskpolicy.conf") / "search" / kind
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def sweep_option(kind: str, name: str) -> dict[str, Any]:
    """The named config as a sweeper option; a sampler's also holds a ``seed`` (null: ``hydra.sweeper.seed``)."""
    if kind == "sampler" and name == "grid":
        return dict(GRID_SAMPLER)
    text = (resources.files("maskpolicy.conf") / "search" / kind / f"{name}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.create(text))
    return {**node, "seed": node.get("seed")} if kind == "sampler" else node
