"""What every command's ``results.json`` holds: typed, versioned, read and written in one place.

Each command's record is a frozen dataclass; :func:`save` writes it with its command name
and schema version, :func:`load` reads any of them back (checking the version and every
key) into the right class. Nothing else in the project reads ``results.json`` by string keys.

Schema versions: 1 — the records before this module (same keys, no ``schema`` field);
2 — adds ``schema``; trial records of a search hold no test metrics (``test_em``/``test_f1``
are null when a run never touched the test split); 3 — targeted scores (``target`` and
``empty_sequences`` of a score, ``mll_targets`` of a run), the ``base`` a run started from, and the
pre-training ``probe`` curve; 4 — the ``downstream`` stage's ``name``, ``metric`` and ``counts``, and a
pre-trained model's ``loading`` report. The ``identify`` record (``maskpolicy-identify``) is new in version 3: it
changes no other record, and an older reader refuses it as an unknown command.

Why this module is long: it is the one home of every command's record and of reading them back; split,
the schema would live in several places.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import types
import typing
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Union

from maskpolicy.meta.results.files import write_json

SCHEMA_VERSION = 4
RESULTS_FILE = "results.json"
PACKAGES = ("maskpolicy", "torch", "pytorch-lightning", "transformers", "tokenizers", "hydra-core", "optuna",
            "higher", "numpy", "matplotlib")


class ResultsError(ValueError):
    """A results file is missing, damaged, or from another schema."""


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on, and Python's."""

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: installed(name) for name in PACKAGES}}


# ---------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Named:
    """A config-group choice and its resolved parameters."""

    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class PolicyRecord(Named):
    """The policy a run masked with; ``source`` says where a saved policy came from."""

    source: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The policy's name; a saved policy adds how it was trained and the folder it was saved in."""
        if not self.source:
            return self.name
        method = self.source.get("training", {}).get("method", "?")
        return f"{self.name}[{method}:{Path(self.source['path']).parent.name}]"


@dataclass(frozen=True)
class ModelRecord(Named):
    parameters: int
    loading: dict[str, Any] | None = None   # a pre-trained model's load report: loaded, new, unused weights


@dataclass(frozen=True)
class Downstream:
    """QA scores of the epoch chosen on dev; test is null for a run that never saw it (a search trial).

    ``name`` is the downstream stage (``closed_book_qa``, ``extractive_qa``, …) and ``metric`` its own
    dev metric (``em`` or ``f1``), the one that chose the epoch; ``counts`` what its encoding skipped or split.
    """

    dev_em: float
    dev_f1: float
    best_epoch: int | None
    test_em: float | None = None
    test_f1: float | None = None
    name: str = "closed_book_qa"
    metric: str = "em"
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def dev_value(self) -> float:
        """The downstream's own dev metric."""
        return self.dev_f1 if self.metric == "f1" else self.dev_em

    @property
    def test_value(self) -> float | None:
        return self.test_f1 if self.metric == "f1" else self.test_em


@dataclass(frozen=True)
class PretrainStats:
    steps: int
    tokens: int
    masked_tokens: int
    final_loss: float | None
    rows: int | None = None
    probe: list[list[float]] = field(default_factory=list)   # [step, value] of the pre-training probe, in order
    probe_target: str | None = None
    probe_seconds: float | None = None
    rates: list[list[float]] = field(default_factory=list)    # [step, rate] along policy.schedule (empty: constant)
    tables: list[dict[str, Any]] = field(default_factory=list)   # corpus tables a policy was fitted with (pmi, …)


@dataclass(frozen=True)
class RateCurveRecord:
    """S_m in nats/token against the masking rate; null where a rate was not drawn."""

    rate: list[float]
    S: list[float | None]
    m: list[int] | None = None


@dataclass(frozen=True)
class MLLScore:
    """The cumulative masked-prediction estimate of log p(held-out text) of a pre-trained masked LM."""

    estimator: str
    estimate: float
    stderr: float | None
    nats_per_token: float
    bits_per_token: float
    reduction: str
    forward_passes: int
    sequences: int
    tokens: int
    per_rate: RateCurveRecord
    seconds: float | None = None
    target: str = "all"          # which tokens were masked and scored; the rest stayed visible
    empty_sequences: int = 0     # rows without a target token: they add 0 and are counted here


@dataclass(frozen=True)
class BaseRecord:
    """The base checkpoint a run's intermediate pre-training started from."""

    source: str                  # "built" (this run built it), "cache" (found it), or a Hugging Face name/path
    hash: str | None = None      # the content hash of everything the base depends on (cached bases)
    path: str | None = None
    steps: int | None = None     # its own pre-training steps (random masking on general text)
    corpus: dict[str, Any] | None = None   # what it was trained on: documents, tokens, ...
    seconds: float | None = None  # time spent building it in this run (0 when found in the cache)


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PretrainResults:
    """``maskpolicy-pretrain``, and every search trial and final re-run."""

    command: ClassVar[str] = "pretrain"
    policy: PolicyRecord
    task: Named
    model: ModelRecord
    seed: int
    downstream: Downstream
    pretrain: PretrainStats
    mll: MLLScore | None
    wall_seconds: float
    versions: dict[str, str | None] = field(default_factory=versions)
    mll_targets: dict[str, MLLScore] = field(default_factory=dict)   # every configured score target, by name
    base: BaseRecord | None = None   # None: pre-trained from scratch


@dataclass(frozen=True)
class FixedRatePoint:
    """One fixed-rate estimate D·S_m; ``bias_total`` = D·S_m − log p(x) when the exact value is known."""

    rate: float
    rate_used: float
    estimate: float
    stderr: float | None
    nats_per_token: float
    forward_passes: int
    bias_total: float | None = None


@dataclass(frozen=True)
class ScoreResults:
    """``maskpolicy-score``: the estimate of a tractable model or a saved masked LM, with its per-rate curve."""

    command: ClassVar[str] = "score"
    task: Named
    seed: int
    estimator: str
    estimate: float
    stderr: float | None
    reduction: str
    nats_per_token: float
    bits_per_token: float
    sequences: int
    tokens: int
    forward_passes: int
    forward_passes_per_sequence: float
    per_rate: RateCurveRecord
    fixed_rates: list[FixedRatePoint]
    wall_seconds: float
    exact_lml: float | None = None
    exact_nats_per_token: float | None = None
    relative_error: float | None = None
    checkpoint: str | None = None
    data_file: str | None = None
    versions: dict[str, str | None] = field(default_factory=versions)
    target: str = "all"
    empty_sequences: int = 0
    positions: list[int] | None = None   # the scored positions of a tractable task's score.target=positions


@dataclass(frozen=True)
class MaskQuality:
    """How well a policy's masks hit the answer tokens of held-out questions."""

    precision: float
    recall: float
    masked_tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class Evaluation:
    split: str
    learned: MaskQuality
    learned_topk: MaskQuality
    entity: MaskQuality
    random: MaskQuality


@dataclass(frozen=True)
class LearnedPolicyRecord:
    params: dict[str, Any]
    artifact: str


@dataclass(frozen=True)
class LearnResults:
    """``maskpolicy-learn``: a trained policy, its mask quality next to the heuristics, its training curve."""

    command: ClassVar[str] = "learn"
    method: str
    task: Named
    policy: LearnedPolicyRecord
    evaluation: Evaluation
    history: dict[str, list[float]]
    seed: int
    wall_seconds: float
    versions: dict[str, str | None] = field(default_factory=versions)


@dataclass(frozen=True)
class RestartRecord:
    """One randomly started predictor of ``maskpolicy-identify``: its loss and its parameters against the truth."""

    loss: float
    excess_loss: float           # loss − the optimum (the true parameters' loss, or the best restart's if lower)
    reached_optimum: bool        # excess_loss ≤ loss_tolerance
    initial_error: float         # max |Δ| after matching states, of the initial distribution
    transition_error: float      # … of the transition matrix
    emission_error: float        # … of the emission rows (discrete) or means (Gaussian)
    error: float                 # max(transition_error, emission_error)
    disagreement: float          # the same error against the best restart's parameters instead of the truth
    heldout_excess_loss: float | None = None   # loss − the truth's on fresh rows (exact targets): fits beyond its data?


@dataclass(frozen=True)
class IdentifyCell:
    """One task on one model: every restart, a summary over those at the optimum, and the paper's statement."""

    model: str
    task: str
    patterns: str
    verdict: str                 # identified | not identified | inconclusive
    reached: int                 # restarts at the optimum
    error_mean: float | None     # recovery error over the restarts at the optimum
    error_std: float | None
    error_max: float | None
    optimal_loss: float
    seconds: float
    restarts: list[RestartRecord]
    paper_statement: str | None = None
    paper_says_identifiable: bool | None = None
    conditions_hold: bool | None = None
    agrees_with_paper: bool | None = None   # None: no statement, conditions unmet, or inconclusive
    seed: int | None = None                 # the model's seed (models are drawn at every seed of identify.seeds)
    start: str | None = None                # the predictor's start: stationary (the paper's class) | free
    paper_source: str | None = None         # version, number and how the statement reached us
    paper_number: str | None = None         # its number in that version (None: unnumbered)
    paper_basis: str | None = None          # stated | follows from <number> (a consequence of ours)
    paper_verified: bool | None = None      # whether the statement's wording was read from the paper
    heldout_excess_max: float | None = None  # the largest held-out excess loss of the restarts at the optimum


@dataclass(frozen=True)
class IdentifySummary:
    """One task on one model family with one start, over the family's seeds: how many models give each verdict."""

    model: str
    task: str
    patterns: str
    start: str
    models: int                  # seeds measured
    verdicts: dict[str, int]     # verdict → number of models
    reached: list[int]           # restarts at the optimum, per model (in seed order)
    paper_says_identifiable: bool | None = None
    paper_label: str | None = None          # e.g. "Theorem 4", "follows from Theorem 4", "unnumbered, recalled"
    applies: int = 0             # models that meet the statement's conditions
    agree: int = 0               # … of which the verdict agrees with it
    disagree: int = 0


@dataclass(frozen=True)
class IdentifyResults:
    """``maskpolicy-identify``: which masked-prediction tasks identify each HMM's parameters."""

    command: ClassVar[str] = "identify"
    models: dict[str, Named]
    conditions: dict[str, dict[str, bool]]
    tasks: dict[str, str]
    data: str
    restarts: int
    loss_tolerance: float
    recovery_tolerance: float
    training: dict[str, Any]
    cells: list[IdentifyCell]
    seed: int
    wall_seconds: float
    versions: dict[str, str | None] = field(default_factory=versions)
    seeds: list[int] = field(default_factory=list)      # every model family drawn at each
    starts: list[str] = field(default_factory=list)     # predictor starts measured (stationary | free)
    length: int | None = None                           # positions per sequence
    heldout_rows: int | None = None                     # fresh rows of the held-out check
    summary: list[IdentifySummary] = field(default_factory=list)
    paper_search: str | None = None                     # where the paper's text was looked for


RECORDS: dict[str, type] = {record.command: record
                            for record in (PretrainResults, ScoreResults, LearnResults, IdentifyResults)}
Record = PretrainResults | ScoreResults | LearnResults | IdentifyResults


# ---------------------------------------------------------------------------- reading and writing


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON-ready form: ``schema`` first, then the record's fields."""
    return {"schema": {"command": record.command, "version": SCHEMA_VERSION}, **dataclasses.asdict(record)}


def save(directory: str | os.PathLike, record: Record) -> Path:
    """Writes ``<directory>/results.json`` atomically."""
    return write_json(Path(directory) / RESULTS_FILE, to_dict(record))


def load(path: str | os.PathLike, expected: type | None = None) -> Any:
    """Reads a ``results.json`` (or the directory holding one) into its record class.

    ``expected`` checks the kind, e.g. ``load(run, PretrainResults)``.
    """
    path = Path(path)
    path = path / RESULTS_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise ResultsError(f"no results at {path}: the run has not finished (or ran elsewhere)") from error
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ResultsError(f"{path} is not valid UTF-8 JSON ({reason}); delete it and re-run") from error
    return from_dict(data, expected, where=str(path))


def from_dict(data: dict[str, Any], expected: type | None = None, where: str = "results") -> Any:
    """The record a ``to_dict`` payload describes; version-1 payloads (no ``schema``) are pretrain-like by keys."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where} holds a JSON {type(data).__name__}, not a results object; delete it and re-run")
    schema = data.get("schema") or {"command": _guess_command(data), "version": 1}
    if not isinstance(schema, dict):
        raise ResultsError(f"{where}: 'schema' must be an object with 'command' and 'version', got "
                           f"{type(schema).__name__}")
    if not isinstance(schema.get("version"), int) or schema["version"] > SCHEMA_VERSION:
        raise ResultsError(f"{where} has results schema {schema.get('version')!r}; this maskpolicy reads versions "
                           f"1–{SCHEMA_VERSION}: upgrade maskpolicy")
    if not isinstance(schema.get("command"), str):
        raise ResultsError(f"{where}: schema.command must be a command name ({', '.join(RECORDS)}), got "
                           f"{schema.get('command')!r}")
    record = RECORDS.get(schema.get("command"))
    if record is None:
        raise ResultsError(f"{where}: unknown command {schema.get('command')!r}; known: {', '.join(RECORDS)}")
    if expected is not None and record is not expected:
        raise ResultsError(f"{where} holds {record.command} results, not {expected.command} results")
    return _build(record, {key: value for key, value in data.items() if key != "schema"}, where)


def _guess_command(data: dict[str, Any]) -> str:
    return "learn" if "method" in data else "score" if "estimator" in data else "pretrain"


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ResultsError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
    missing = [name for name, f in fields.items() if name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ResultsError(f"{where}: missing key(s) {missing} for {cls.__name__}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        return _convert(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    arguments = typing.get_args(hint)
    if origin is list and arguments and dataclasses.is_dataclass(arguments[0]):
        if not isinstance(value, list):
            raise ResultsError(f"{where}: expected a list of {arguments[0].__name__}, got {type(value).__name__}")
        return [_build(arguments[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict and len(arguments) == 2 and dataclasses.is_dataclass(arguments[1]):
        if not isinstance(value, dict):
            raise ResultsError(f"{where}: expected an object of {arguments[1].__name__}, got {type(value).__name__}")
        return {key: _build(arguments[1], item, f"{where}.{key}") for key, item in value.items()}
    return value
