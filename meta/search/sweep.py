"""Hydra's sweep overrides as Optuna distributions, and the link from a launched run back to its trial.

``hydra/sweeper=maskpolicy_optuna`` (the ``hydra_plugins.maskpolicy_optuna_sweeper`` package) parses the
command line's sweep overrides with :func:`parse_sweep`, asks its study for trials, and launches one
``maskpolicy-pretrain`` run per trial with the trial's values and :func:`link_overrides`. The run opens
its trial with :func:`linked_trial` and reports to it through the study's storage with the same pruning
callbacks a ``maskpolicy-search`` trial uses (:func:`linked_callbacks`), so the study's pruner can stop it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from maskpolicy.meta.config import plain
from maskpolicy.meta.pipeline import NO_CALLBACKS, StageCallbacks
from maskpolicy.meta.search.choices import names, sweep_option
from maskpolicy.meta.search.engines import SearchConfigError, build_pruner, open_storage
from maskpolicy.meta.search.objectives import Objective, downstream_objective, pruned_objective, resolve
from maskpolicy.meta.search.space import Domain, SearchSpaceError, parse_domain
from maskpolicy.meta.search.study import PruningPlan

GRAMMAR = ("choice(a,b,…), range(start,stop[,step]), interval(low,high) or tag(log, interval(low,high)), each "
           "override quoted for the shell, e.g. 'policy.rate=interval(0.1,0.4)'")
SWEEPER = "maskpolicy_optuna"    # hydra/sweeper=maskpolicy_optuna
LINK_KEY = "optuna_trial"        # the pretrain config's node that names the trial a launched run reports to
PRUNER_ATTR = "pruner"           # the study keeps its pruner's config, so a launched run judges with the same one
_PLAIN_TEXT = re.compile(r"[\w.:/@+\-]+")


class SweepError(SearchConfigError):
    """A sweep override or sweeper setting cannot be turned into an Optuna study."""


@dataclass(frozen=True)
class SweepSpace:
    """What a sweep varies, as entries of ``maskpolicy-search``'s space grammar by override key (the same
    ``{type: float, low, high, ...}`` a ``search.space.budget`` entry is), and the overrides every run gets as
    written."""

    entries: dict[str, dict[str, Any]]
    fixed: tuple[str, ...]

    @property
    def domains(self) -> dict[str, Domain]:
        return {key: parse_domain(key, entry) for key, entry in self.entries.items()}

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: domain.distribution for key, domain in self.domains.items()}

    def suggest(self, trial: optuna.Trial) -> None:
        """Draws every swept key for ``trial`` (its ``params`` then hold them)."""
        for key, domain in self.domains.items():
            domain.suggest(trial, key)

    def grid(self) -> dict[str, list[Any]]:
        """Every swept key's grid values, for a grid sampler."""
        return {key: domain.grid_values(key) for key, domain in self.domains.items()}

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The command-line overrides of one trial's run."""
        return [*self.fixed, *(f"{key}={override_text(value)}" for key, value in params.items())]

    def largest(self, key: str) -> float | None:
        """The largest value the space can give ``key`` (None: the sweep does not vary it)."""
        distribution = self.distributions.get(key)
        if isinstance(distribution, IntDistribution | FloatDistribution):
            return distribution.high
        if isinstance(distribution, CategoricalDistribution):
            return max(float(choice) for choice in distribution.choices)
        return None


def override_text(value: Any) -> str:
    """A parameter value as override text (categorical strings are kept in Hydra's own encoding)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def quoted(text: str) -> str:
    """``text`` as one Hydra override value, quoted unless it is plain."""
    if _PLAIN_TEXT.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_sweep(arguments: Sequence[str]) -> SweepSpace:
    """Splits Hydra overrides into space entries (the sweep overrides) and fixed overrides (the rest)."""
    parser = OverridesParser.create()
    entries: dict[str, dict[str, Any]] = {}
    fixed = []
    for argument in arguments:
        try:
            override = parser.parse_override(argument)
        except HydraException as error:
            raise SweepError(f"cannot parse the sweep override {argument!r}: {error}. Write {GRAMMAR}") from error
        if not override.is_sweep_override():
            fixed.append(argument)
            continue
        key = override.get_key_element()
        if key in entries:
            raise SweepError(f"the sweep gives {key} twice; give each key one sweep expression")
        entries[key] = space_entry(override, argument)
        try:
            parse_domain(key, entries[key])
        except SearchSpaceError as error:
            raise SweepError(f"{argument!r}: {error}") from error
    return SweepSpace(entries, tuple(fixed))


def check_command_line(arguments: Sequence[str]) -> None:
    """Fails before Hydra starts on an override Hydra cannot parse, and, when ``hydra/sweeper=maskpolicy_optuna``
    is chosen, on a sweep expression this sweeper cannot search, with the grammar it accepts."""
    overrides = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
    if f"hydra/sweeper={SWEEPER}" in (override.replace(" ", "") for override in overrides):
        parse_sweep(overrides)
        return
    parser = OverridesParser.create()
    for argument in overrides:
        try:
            parser.parse_override(argument)
        except HydraException as error:
            raise SweepError(f"cannot parse the override {argument!r}: {error}. Sweep values are written {GRAMMAR}; "
                             "see https://hydra.cc/docs/advanced/override_grammar/extended/") from error


def space_entry(override: Override, argument: str) -> dict[str, Any]:
    """One sweep override as the search space's entry for its key (see :mod:`maskpolicy.meta.search.space`)."""
    value = override.value()
    log = "log" in getattr(value, "tags", ())
    if override.value_type == ValueType.INTERVAL_SWEEP:
        low, high = value.start, value.end
        if not low < high:
            raise SweepError(f"{argument!r}: interval(low,high) needs low < high")
        if log and low <= 0:
            raise SweepError(f"{argument!r}: a log interval needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return {"type": "int", "low": low, "high": high, "log": log}
        return {"type": "float", "low": float(low), "high": float(high), "log": log}
    if override.value_type == ValueType.RANGE_SWEEP:
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise SweepError(f"{argument!r} holds no value; range(start,stop,step) stops before stop")
        if value.shuffle:  # hydra-optuna-sweeper's reading: the range's values as unordered choices
            return {"type": "categorical", "choices": sorted(set(values))}
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values):
            if log and step == 1:
                return {"type": "int", "low": low, "high": high, "log": True}
            return {"type": "int", "low": low, "high": high, "step": step}
        return {"type": "float", "low": low, "high": low + step * round((high - low) / step), "step": step}
    if override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
        if log:
            raise SweepError(f"{argument!r}: tag(log, …) applies to interval() and range(), not to choices")
        encoded = override.sweep_iterator(transformer=Transformer.encode)
        identity = override.sweep_iterator(transformer=Transformer.identity)
        choices = [raw if isinstance(raw, int | float) else text for raw, text in zip(identity, encoded, strict=True)]
        return {"type": "categorical", "choices": list(dict.fromkeys(choices))}
    raise SweepError(f"{argument!r}: the Optuna sweeper cannot search a "
                     f"{override.value_type.name.lower().replace('_', ' ')}; write "
                     f"{GRAMMAR}")


def config_node(kind: str, choice: str | Mapping[str, Any]) -> DictConfig:
    """A sampler or pruner config: a name from ``conf/search/<kind>/`` or a ``_target_`` mapping."""
    if not isinstance(choice, str):
        return OmegaConf.create(plain(choice) if isinstance(choice, DictConfig) else dict(choice))
    if choice not in names(kind):
        raise SweepError(f"hydra.sweeper.{kind}={choice!r} is not one of {names(kind)}; or give a mapping with a "
                         "_target_")
    return OmegaConf.create(sweep_option(kind, choice))


def sweep_space(params: Mapping[str, str], arguments: Sequence[str]) -> SweepSpace:
    """The sweep of ``hydra.sweeper.params`` and the command line's overrides, which win for a key both give."""
    given = {_key(argument) for argument in arguments}
    return parse_sweep([*(f"{key}={value}" for key, value in params.items() if key not in given), *arguments])


def _key(argument: str) -> str | None:
    try:
        return OverridesParser.create().parse_override(argument).get_key_element()
    except HydraException:
        return None  # parse_sweep names the problem


def link_overrides(storage: str, study_name: str, number: int, finetune_offset: int, start_fraction: float,
                   objectives: Sequence[str] = ()) -> list[str]:
    """The overrides that tell a launched run which trial to report to (and, if given, which objectives to return)."""
    link = [f"{LINK_KEY}.storage={quoted(storage)}", f"{LINK_KEY}.study_name={quoted(study_name)}",
            f"{LINK_KEY}.number={number}", f"{LINK_KEY}.finetune_offset={finetune_offset}",
            f"{LINK_KEY}.start_fraction={start_fraction}"]
    return [*link, f"{LINK_KEY}.objectives=[{','.join(objectives)}]"] if objectives else link


def linked_trial(link: Mapping[str, Any] | None) -> optuna.Trial | None:
    """The running trial a sweeper launched this run for (None outside such a sweep), judged by the study's pruner."""
    if not link or link.get("number") is None:
        return None
    storage = open_storage(link["storage"], heartbeat_interval=None)
    try:
        study_id = storage.get_study_id_from_name(link["study_name"])
    except KeyError as error:
        raise SweepError(f"{LINK_KEY}.study_name={link['study_name']!r} is not a study in {link['storage']}; "
                         "these keys are set by hydra/sweeper=maskpolicy_optuna, not by hand") from error
    attrs = storage.get_study_user_attrs(study_id)
    pruner = build_pruner(OmegaConf.create(attrs[PRUNER_ATTR])) if PRUNER_ATTR in attrs else None
    study = optuna.load_study(study_name=link["study_name"], storage=storage, pruner=pruner)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, link["number"]))


def run_objectives(cfg: DictConfig) -> tuple[Objective, ...]:
    """What a launched run returns: the objectives its sweep names, else the downstream's own dev metric."""
    metric = str((cfg.get("downstream") or {}).get("metric", "em"))
    names = (cfg.get(LINK_KEY) or {}).get("objectives")
    return resolve(list(names), metric) if names else (downstream_objective(metric),)


def linked_callbacks(cfg: DictConfig, trial: optuna.Trial | None) -> StageCallbacks:
    """The pruning callbacks of a launched run: the probe's values in pre-training (``pretrain.probe.every`` > 0),
    then its objective's fine-tuning monitor after each epoch, on one step axis as in ``maskpolicy-search``
    (several objectives: none, Optuna prunes single-objective studies only)."""
    if trial is None:
        return NO_CALLBACKS
    link = cfg[LINK_KEY]
    every = cfg.pretrain.probe.every or None
    plan = PruningPlan(pruned_objective(run_objectives(cfg)), every, cfg.pretrain.probe.target if every else None,
                       int(link.finetune_offset), start_fraction=float(link.start_fraction) if every else 0.0)
    return plan.callbacks(trial)
