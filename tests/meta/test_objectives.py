"""One objectives module: for [dev_em], [mll] and [dev_em, mll] the right value is pruned on, returned and ranked."""

from __future__ import annotations

import optuna
import pytest
from hydra import compose, initialize_config_module

from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.search import objectives, study
from maskpolicy.meta.search.engines import SearchConfigError
from maskpolicy.meta.search.objectives import DEV_EM, MLL, ObjectiveError
from maskpolicy.meta.search.pruning import OptunaPruning

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"families": {"random": {"rate": 0.2}}}


def search_cfg(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=list(overrides))
    cfg.search.space = SPACE
    return cfg


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # one trial asked by hand, not by optimize
@pytest.mark.parametrize(("names", "pruned_on", "returned"), [
    (["dev_em"], "dev/em", 0.3),
    (["mll"], None, -2.0),
    (["dev_em", "mll"], None, (0.3, -2.0)),
])
def test_each_objective_set_prunes_returns_and_directs_the_right_values(tmp_path, monkeypatch, make_run, names,
                                                                        pruned_on, returned):
    seen = {}

    def fake_run(cfg, policy, overrides, seed, output_dir, run_names, *, test, callbacks=()):
        seen.update(test=test, monitors=[c.monitor for c in callbacks if isinstance(c, OptunaPruning)])
        return make_run(0.3, 0.9, -2.0, seed=seed)

    monkeypatch.setattr(study, "run_configuration", fake_run)
    cfg = search_cfg(f"search.objectives=[{','.join(names)}]", "search.every_family_first=false")
    search = study.prepare(cfg, tmp_path)
    assert search.study.directions == [optuna.study.StudyDirection.MAXIMIZE] * len(names)
    assert isinstance(search.study.pruner, optuna.pruners.MedianPruner) == (pruned_on is not None)
    value = study.trial_function(cfg, search, tmp_path, RunNames("", "bioworld", "tiny_bert"))(search.study.ask())
    assert value == returned
    assert seen == {"test": False, "monitors": [] if pruned_on is None else [pruned_on]}


def test_objective_values_are_read_from_the_run(make_run):
    results = make_run(0.25, 0.9, -3.5)
    assert objectives.values((DEV_EM,), results) == 0.25 and objectives.values((MLL,), results) == -3.5
    assert objectives.values((MLL, DEV_EM), results) == (-3.5, 0.25)  # never the test value 0.9
    with pytest.raises(ObjectiveError, match=r"no finite value for \['mll'\]"):
        objectives.values((DEV_EM, MLL), make_run(0.25, 0.9, None))


def test_bad_objective_lists_are_refused():
    for names in ([], ["accuracy"], ["mll", "mll"]):
        with pytest.raises(ObjectiveError, match="search.objectives must be a non-empty list"):
            objectives.resolve(names)


@pytest.mark.parametrize(("seed", "final", "message"), [
    (0, "[0,1]", r"include the search's seed 0"),
    (3, "[1,3]", r"include the search's seed 3"),
    (0, "[1,1]", "repeat a seed"),
])
def test_final_seeds_overlapping_the_search_are_refused(tmp_path, seed, final, message):
    with pytest.raises(SearchConfigError, match=message):
        study.prepare(search_cfg(f"seed={seed}", f"search.final.seeds={final}"), tmp_path)


def test_default_final_seeds_follow_the_search_seed():
    assert study.final_seeds(search_cfg("seed=4")) == (5, 6)  # the quick profile: two final seeds
    assert study.final_seeds(search_cfg("seed=4", "search/profile=full")) == (5, 6, 7)
