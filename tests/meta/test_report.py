"""The search report: one self-contained HTML page, every section present, user text escaped, written atomically."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from maskpolicy.meta.search import report as report_module
from maskpolicy.meta.search.report import write_report

FAMILIES = CategoricalDistribution(["random", "span", "entity"])
OWN_PARAMS = {"random": ("random.rate", FloatDistribution(0.05, 0.5)),
              "span": ("span.mean_length", IntDistribution(1, 10)),
              "entity": ("entity.keep", FloatDistribution(0.0, 1.0))}
HOSTILE = "<b>x</b>"
HEADINGS = ("1. Summary", "2. Leaderboard", "3. Optimisation history", "4. Parameter importances",
            "5. MLL score vs downstream metric", "6. S_m curves of the best policies")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_trial(family: str, number: int, values: list[float] | None = None, state: TrialState = TrialState.COMPLETE,
               epochs: Sequence[float] = (), **attrs) -> FrozenTrial:
    """One trial of ``family``, its own parameter set from ``number``."""
    name, distribution = OWN_PARAMS[family]
    own = distribution.low + (number % 5) * (distribution.high - distribution.low) / 5
    params = {"family": family, name: int(own) if isinstance(distribution, IntDistribution) else own,
              "pretrain.steps": 100 + 100 * (number % 2)}
    distributions = {"family": FAMILIES, name: distribution, "pretrain.steps": IntDistribution(100, 200, step=100)}
    user_attrs = {"seconds": 12.5, "tokens": 40_000, "test_em": None, "policy": {"name": family}, "overrides": {},
                  "mll_nats_per_token": None if values is None else -3.0 + values[0], **attrs}
    return create_trial(state=state, params=params, distributions=distributions, values=values, user_attrs=user_attrs,
                        intermediate_values=dict(enumerate(epochs)))


def single_objective_study() -> optuna.Study:
    """Three families: completed, pruned (with learning curves), failed and running trials."""
    study = optuna.create_study(study_name="search <&> test", direction="maximize")
    values = {"random": [0.20, 0.25, 0.22, 0.30], "span": [0.35, 0.40, 0.31], "entity": [0.45, 0.42, 0.50]}
    number = 0
    for family, family_values in values.items():
        for value in family_values:
            study.add_trial(make_trial(family, number, [value], epochs=[value / 3, value / 2, value]))
            number += 1
    study.add_trial(make_trial("random", number, state=TrialState.PRUNED, epochs=[0.05, 0.08]))
    study.add_trial(make_trial("span", number + 1, state=TrialState.FAIL, failure="RuntimeError: <out of memory>"))
    study.add_trial(make_trial("entity", number + 2, state=TrialState.RUNNING, epochs=[0.1]))
    return study


def two_objective_study() -> optuna.Study:
    """dev EM and MLL score, with a clear trade-off and one dominated trial."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    points = [("random", 0.20, -2.0), ("span", 0.40, -2.5), ("entity", 0.50, -3.0), ("entity", 0.30, -3.2)]
    for number, (family, dev_em, mll) in enumerate(points):
        study.add_trial(make_trial(family, number, [dev_em, mll], mll_nats_per_token=mll))
    return study


def leaderboard() -> list[dict]:
    """Two rows, best first; the second carries a label that must not become markup."""
    common = {"seeds": 3, "seconds": 1234.5, "tokens": 1_200_000, "mll_nats_per_token": -2.4, "mll_spread": 0.05}
    return [{"rank": 1, "label": "entity", "family": "entity", "source": "search", "trial": 9,
             "params": {"entity.keep": 0.8, "pretrain.steps": 200}, "dev_em": 0.48, "dev_em_spread": 0.02,
             "test_em": 0.46, "test_em_spread": 0.03, **common},
            {"rank": 2, "label": HOSTILE, "family": "span", "source": "transfer", "trial": None,
             "params": {"span.mean_length": 3}, "dev_em": 0.38, "dev_em_spread": None, "test_em": 0.35,
             "test_em_spread": None, **common}]


CORRELATION = {"method": "spearman", "rho": 0.4, "p_value": 0.2, "trials": 10}
CURVES = {"entity": {"rate": [0.1, 0.5, 0.9], "S": [-1.0, None, -3.0]},
          HOSTILE: {"rate": [0.1, 0.9], "S": [-1.5, -2.5]}}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[str, list[str]]:
    """The single-objective report's text and the folder's contents after writing it."""
    folder = tmp_path_factory.mktemp("report")
    path = write_report(folder / "report.html", single_objective_study(), leaderboard(), CORRELATION, CURVES,
                        ["dev_em"], title=f"search {HOSTILE}")
    return path.read_text(encoding="utf-8"), sorted(p.name for p in folder.iterdir())


def test_report_is_one_html_page_with_every_section(full_report):
    text, files = full_report
    assert files == ["report.html"]  # the temporary file was moved into place, none left behind
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<title>search &lt;b&gt;x&lt;/b&gt;</title>" in text
    for heading in (*HEADINGS, "7. Learning curves (intermediate values)"):
        assert f"<h2>{heading}</h2>" in text
    assert "Pareto front" not in text  # one objective: no front to show
    assert text.count("class='how'") == 7


def test_report_opens_offline(full_report):
    text, _ = full_report
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) >= 5  # history, importances (overall + per family), scatter, S_m curves, learning curves
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)


def test_user_text_is_escaped(full_report):
    text, _ = full_report
    assert HOSTILE not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "search &lt;&amp;&gt; test" in text  # the study name
    assert "RuntimeError: &lt;out of memory&gt;" in text  # the failure reason, in the failed-trials table


def test_summary_leaderboard_and_captions_carry_the_numbers(full_report):
    text, _ = full_report
    assert "10 complete, 1 pruned, 1 failed, 1 running" in text
    assert "#9, family <code>entity</code>: dev_em = 0.5000" in text  # the best trial
    assert text.count("<tr class='best'>") == 1 and "0.480 ± 0.020" in text and "0.350" in text
    assert "1,200,000" in text and "Test EM comes only from these final re-runs" in text
    assert "ρ = +0.40 (p = 0.2, 10 trials)" in text and "They disagree" not in text
    assert "Within family <code>entity</code>" in text  # families with three or more completed trials


def test_negative_correlation_is_called_a_disagreement(tmp_path):
    correlation = {"method": "spearman", "rho": -0.6, "p_value": 0.04, "trials": 10}
    text = write_report(tmp_path, single_objective_study(), [], correlation, {}, ["dev_em"]).read_text()
    assert "They disagree" in text and "ρ = -0.60" in text
    assert "The leaderboard is empty" in text and "No per-rate curves" in text


def test_two_objectives_add_the_pareto_front(tmp_path):
    study = two_objective_study()
    text = write_report(tmp_path / "report.html", study, leaderboard(), None, CURVES, ["dev_em", "mll"]).read_text()
    assert "<h2>7. Pareto front</h2>" in text and "<h2>8. Learning curves (intermediate values)</h2>" in text
    pareto = text.split("<h2>7. Pareto front</h2>", 1)[1].split("</section>", 1)[0]
    assert sorted(int(n) for n in re.findall(r"<td class='num'>#(\d+)</td>", pareto)) == [0, 1, 2]  # #3 is dominated
    assert "3 trials (see <a href='#pareto'>section 7</a>)" in text and "No correlation" in text


def test_a_single_completed_trial_explains_the_missing_importances(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial("span", 0, [0.3], epochs=[0.1, 0.3]))
    text = write_report(tmp_path / "report.html", study, [], None, {}, ["dev_em"]).read_text()
    assert "Importances are missing: they need at least two completed trials and the study has 1" in text
    assert "#0, family <code>span</code>" in text and "No trial failed." in text


def test_a_study_without_completed_trials_still_gets_a_report(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial("random", 0, state=TrialState.FAIL, failure="ValueError: no finite value"))
    study.add_trial(make_trial("span", 1, state=TrialState.PRUNED, epochs=[0.1]))
    text = write_report(tmp_path / "report.html", study, [], None, {}, ["dev_em"]).read_text()
    assert "No trial has completed yet" in text and "ValueError: no finite value" in text
    assert "No completed trial has an MLL score" in text
    empty = write_report(tmp_path / "empty.html", optuna.create_study(), [], None, {}, ["dev_em"]).read_text()
    assert "No trial has finished yet" in empty and "No trial reported intermediate values" in empty


def test_a_failed_write_keeps_the_old_report_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("previous report")

    def refuse(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(report_module.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, optuna.create_study(), [], None, {}, ["dev_em"])
    assert path.read_text() == "previous report" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_two_objective_importances_explain_a_high_first_objective():
    """Optuna's default evaluator treats a low target as good; the report must rate what makes dev EM high."""
    single, double = optuna.create_study(direction="maximize"), optuna.create_study(directions=["maximize"] * 2)
    for number in range(30):
        near, noise = (number * 0.37) % 1.0, (number * 0.61) % 1.0
        trial = {"params": {"near": near, "noise": noise},
                 "distributions": {"near": FloatDistribution(0, 1), "noise": FloatDistribution(0, 1)}}
        dev_em = 1.0 - abs(near - 0.8) + 0.05 * noise
        single.add_trial(create_trial(values=[dev_em], **trial))
        double.add_trial(create_trial(values=[dev_em, noise], **trial))
    expected = report_module._param_importances(single)
    assert max(expected, key=expected.get) == "near"
    assert report_module._param_importances(double) == pytest.approx(expected)
