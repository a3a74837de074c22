"""One objectives module: for [dev_em], [mll] and [dev_em, mll] the right value is pruned on, returned and ranked."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_module

from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.search import objectives, study
from maskpolicy.meta.search.engines import SearchConfigError
from maskpolicy.meta.search.objectives import DEV_EM, DEV_F1, MLL, ObjectiveError
from maskpolicy.meta.search.pruning import OptunaPruning, ProbePruning

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"families": {"random": {"rate": 0.2}}}


def search_cfg(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=list(overrides))
    cfg.search.space = SPACE
    return cfg


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # one trial asked by hand, not by optimize
@pytest.mark.parametrize(("names", "during_pretraining", "finetuning_monitors", "returned"), [
    (["dev_em"], True, ["dev/em"], 0.3),
    (["dev"], True, ["dev/em"], 0.3),               # the downstream's own metric: closed-book QA's EM
    (["dev", "downstream=extractive_qa"], True, ["dev/f1"], 0.4),   # extractive QA's F1
    (["dev_f1"], True, ["dev/f1"], 0.4),
    (["mll"], True, [], -2.0),                        # known only at the end: pruned on the probe alone
    (["dev_em", "mll"], False, [], (0.3, -2.0)),      # Optuna prunes single-objective studies only
])
@pytest.mark.parametrize("probe_pruning", [True, False])
def test_each_objective_set_prunes_returns_and_directs_the_right_values(tmp_path, monkeypatch, make_run, names,
                                                                        during_pretraining, finetuning_monitors,
                                                                        returned, probe_pruning):
    seen = {}

    def fake_run(cfg, policy, overrides, seed, output_dir, run_names, *, test, callbacks):
        probe = SimpleNamespace(name="probe/entities")
        seen.update(test=test, monitors=[c.monitor for c in callbacks.finetuning if isinstance(c, OptunaPruning)],
                    probes=[type(c) for c in callbacks.pretraining(probe)],
                    without_probe=list(callbacks.pretraining(None)))
        return make_run(0.3, 0.9, -2.0, seed=seed, dev_f1=0.4)

    monkeypatch.setattr(study, "run_configuration", fake_run)
    extra = [name for name in names if "=" in name]
    names = [name for name in names if "=" not in name]
    cfg = search_cfg(f"search.objectives=[{','.join(names)}]", "search.every_family_first=false", *extra,
                     f"search.pruning.pretraining={str(probe_pruning).lower()}", "pretrain.probe.every=100")
    search = study.prepare(cfg, tmp_path)
    assert search.study.directions == [optuna.study.StudyDirection.MAXIMIZE] * len(names)
    pruned = (during_pretraining and probe_pruning) or bool(finetuning_monitors)
    assert isinstance(search.study.pruner, optuna.pruners.MedianPruner) == pruned
    value = study.trial_function(cfg, search, tmp_path, RunNames("", "bioworld", "tiny_bert"))(search.study.ask())
    assert value == returned
    assert seen == {"test": False, "monitors": finetuning_monitors, "without_probe": [],
                    "probes": [ProbePruning] if during_pretraining and probe_pruning else []}
    assert search.study.user_attrs["pruning"]["probe_every"] == (100 if pruned and probe_pruning else None)


def test_objective_values_are_read_from_the_run(make_run):
    results = make_run(0.25, 0.9, -3.5)
    assert objectives.values((DEV_EM,), results) == 0.25 and objectives.values((MLL,), results) == -3.5
    assert objectives.values((MLL, DEV_EM), results) == (-3.5, 0.25)  # never the test value 0.9
    with pytest.raises(ObjectiveError, match=r"no finite value for \['mll'\]"):
        objectives.values((DEV_EM, MLL), make_run(0.25, 0.9, None))


def test_bad_objective_lists_are_refused():
    for names in ([], ["accuracy"], ["mll", "mll"], ["dev", "dev_em"]):
        with pytest.raises(ObjectiveError, match=r"search.objectives must be a non-empty list .*'dev', 'dev_em'"):
            objectives.resolve(names)


def test_dev_is_the_downstream_metric():
    assert objectives.resolve(["dev"]) == (DEV_EM,) and objectives.resolve(["dev", "mll"], "f1") == (DEV_F1, MLL)
    assert objectives.downstream_axis((MLL, DEV_F1)) is DEV_F1 and objectives.downstream_axis((MLL,)) is DEV_EM


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


@pytest.mark.parametrize(("overrides", "message"), [
    (["search.objectives=[mll_entities]", "score.targets=[all]"], "include entities in score.targets"),
    (["search.objectives=[mll]", "score.enabled=false"], "set score.enabled=true and include all"),
    (["pretrain.probe.every=500"], r"pretrain.probe.every=500 is longer than the shortest pre-training budget "
                                   r"\(400 steps\)"),
    (["pretrain.probe.every=300", "search.pruning.start_fraction=0.9"], r"has no probe after "
                                                                         r"search.pruning.start_fraction=0.9"),
    (["search.pruning.start_fraction=1.0"], r"start_fraction must be in \[0, 1\)"),
])
def test_signals_a_search_cannot_get_are_refused_before_any_trial(tmp_path, overrides, message):
    with pytest.raises(SearchConfigError, match=message):
        study.prepare(search_cfg(*overrides), tmp_path)
    assert not (tmp_path / "study.db").exists()


def test_the_targeted_score_is_an_objective(make_run):
    assert objectives.resolve(["mll_entities"])[0].metric == "mll_entities_nats_per_token"
    assert objectives.MLL_ENTITIES.direction == "maximize" and objectives.MLL_ENTITIES.monitor is None


def test_the_pruning_plan_puts_epochs_past_the_longest_budget_the_space_can_draw(tmp_path):
    cfg = search_cfg("pretrain.probe.every=100")
    cfg.search.space = {"families": {"random": {"rate": 0.2}},
                        "budget": {"pretrain.steps": {"type": "int", "low": 100, "high": 900, "step": 100}}}
    plan = study.prepare(cfg, tmp_path).pruning
    assert (plan.probe_every, plan.probe_target, plan.finetune_offset, plan.start_fraction) == (100, "answers", 901,
                                                                                                0.5)
    cfg.pretrain.probe.every = 200
    with pytest.raises(SearchConfigError, match=r"shortest pre-training budget \(100 steps\)"):
        study.prepare(cfg, tmp_path / "other")
