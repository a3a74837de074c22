"""The metric registry's shared suite: every registered metric and every objective, iterated, never listed by hand.

Each metric is aggregated, shown in the summary's and the leaderboard's text tables and the report's columns,
labelled, and recorded on trials unless it is a test metric; each objective reads its registered metric, and a
score objective is refused when trials would not compute its target.
"""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from maskpolicy.meta.results.aggregate import SUMMARY_COLUMNS, aggregate
from maskpolicy.meta.results.metrics import METRICS, SCORE_OF_TARGET, TRIAL_METRICS, label, metric
from maskpolicy.meta.search import leaderboard, study
from maskpolicy.meta.search.objectives import OBJECTIVES, Objective, ObjectiveError
from maskpolicy.meta.search.report import page

NAMES = sorted(METRICS)


@pytest.fixture
def full_run(make_run):
    """A run with a distinct value for every registered metric: dev EM 0.4, dev F1 0.45, test 0.3, scores −2/−3/−4."""
    run = make_run(0.4, 0.3, -2.0, dev_f1=0.45)
    targets = {"entities": dataclasses.replace(run.mll, nats_per_token=-3.0),
               "answers": dataclasses.replace(run.mll, nats_per_token=-4.0)}
    return dataclasses.replace(run, mll_targets=targets)


EXPECTED = {"dev_em": 0.4, "dev_f1": 0.45, "test_em": 0.3, "test_f1": 0.3, "mll_nats_per_token": -2.0,
            "mll_entities_nats_per_token": -3.0, "mll_answers_nats_per_token": -4.0}


def test_the_registry_reads_every_metric_of_a_run(full_run):
    assert {name: METRICS[name].read(full_run) for name in NAMES} == pytest.approx(EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_is_aggregated_shown_labelled_and_recorded_unless_it_is_test(name, full_run, make_run):
    row = aggregate([full_run, dataclasses.replace(full_run, seed=2)])
    assert row[name] == pytest.approx(METRICS[name].read(full_run)) and row[f"{name}_spread"] == 0.0
    assert name in [column.key for column in SUMMARY_COLUMNS]
    assert name in [column.key for column in leaderboard.COLUMNS]
    assert page.metric_label(name) == label(name) == METRICS[name].label
    assert (name in TRIAL_METRICS) == (METRICS[name].split != "test")
    dev_only = aggregate([make_run(0.1, None, None)])  # no test answers, no scores: only dev metrics are present
    assert (dev_only[name] is not None) == (METRICS[name].split == "dev")


@pytest.mark.parametrize("target", sorted(SCORE_OF_TARGET))
def test_each_score_target_has_one_metric_read_from_that_target(target):
    score = SCORE_OF_TARGET[target]
    assert score.score_target == target and score.split == "held-out"
    assert [m.name for m in METRICS.values() if m.score_target == target] == [score.name]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_reads_its_registered_metric(name, full_run):
    objective = OBJECTIVES[name]
    registered = METRICS[objective.metric]
    assert objective.label == registered.label and objective.meaning == registered.meaning
    assert objective.direction == registered.direction and objective.read(full_run) == registered.read(full_run)
    assert registered.split != "test"  # a search never optimises a test metric


@pytest.mark.parametrize("name", sorted(name for name, o in OBJECTIVES.items() if o.score_target))
def test_a_score_objective_is_refused_when_trials_would_not_compute_its_target(name):
    objective = OBJECTIVES[name]
    others = [target for target in SCORE_OF_TARGET if target != objective.score_target]
    computed = OmegaConf.create({"score": {"enabled": True, "targets": [objective.score_target]}})
    study._check_scored(computed, [objective])
    for cfg in ({"score": {"enabled": False, "targets": [objective.score_target]}},
                {"score": {"enabled": True, "targets": others}}):
        with pytest.raises(study.SearchConfigError, match=f"{name}.*{objective.score_target}"):
            study._check_scored(OmegaConf.create(cfg), [objective])


def test_an_unknown_metric_or_direction_is_refused_by_name():
    with pytest.raises(KeyError, match="no metric 'dev_bleu'.*dev_em"):
        metric("dev_bleu")
    with pytest.raises(KeyError, match="dev_bleu"):
        Objective("bleu", "dev_bleu")
    with pytest.raises(ObjectiveError, match="maximize or minimize"):
        Objective("em", "dev_em", direction="up")
    assert Objective("em_low", "dev_em", direction="minimize").sign == -1.0
