"""The search report: one self-contained page, user text escaped, every objective value under its own label, one
colour per family in every figure, written atomically."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import matplotlib
import optuna
import pytest
from matplotlib import pyplot
from matplotlib.colors import to_hex
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from maskpolicy.meta.results import files
from maskpolicy.meta.search.objectives import DEV_EM, MLL, Objective, pruning_monitor
from maskpolicy.meta.search.report import figures, importance, page, write_report

FAMILIES = CategoricalDistribution(["random", "span", "entity", "learned"])
OWN_PARAMS = {"random": ("random.rate", FloatDistribution(0.05, 0.5)),
              "span": ("span.mean_length", IntDistribution(1, 10)),
              "entity": ("entity.keep", FloatDistribution(0.0, 1.0)),
              "learned": ("learned.temperature", FloatDistribution(0.1, 2.0))}
HOSTILE = "<b>x</b>"
SECTIONS = ("summary", "leaderboard", "history", "importances", "mll", "curves", "learning-curves")
# (family, dev EM, MLL score): MLL falls as dev EM rises, as measured on bioworld
POINTS = [("random", 0.20, -2.0), ("random", 0.25, -2.1), ("random", 0.22, -2.15), ("span", 0.35, -2.4),
          ("span", 0.40, -2.5), ("span", 0.31, -2.45), ("entity", 0.45, -2.9), ("entity", 0.42, -2.95),
          ("entity", 0.50, -3.0), ("learned", 0.30, -3.2)]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_trial(family: str, number: int, metrics: dict | None, objectives: Sequence[Objective],
               state: TrialState = TrialState.COMPLETE, epochs: Sequence[float] = (), **attrs) -> FrozenTrial:
    """One trial of ``family``, its own parameter from ``number``; values read from ``metrics`` per objective."""
    name, distribution = OWN_PARAMS[family]
    own = distribution.low + (number % 5) * (distribution.high - distribution.low) / 5
    params = {"family": family, name: int(own) if isinstance(distribution, IntDistribution) else own,
              "pretrain.steps": 100 + 100 * (number % 2)}
    distributions = {"family": FAMILIES, name: distribution, "pretrain.steps": IntDistribution(100, 200, step=100)}
    values = [metrics[o.metric] for o in objectives] if state == TrialState.COMPLETE else None
    user_attrs = {"seconds": 12.5, "tokens": 40_000, **({"metrics": metrics} if metrics else {}), **attrs}
    return create_trial(state=state, params=params, distributions=distributions, values=values, user_attrs=user_attrs,
                        intermediate_values=dict(enumerate(epochs)) if pruning_monitor(objectives) else None)


def make_study(objectives: Sequence[Objective], name: str = "search <&> test") -> optuna.Study:
    """The ten POINTS completed, one pruned, one failed and one running trial."""
    study = optuna.create_study(study_name=name, directions=[o.direction for o in objectives])
    for number, (family, dev_em, mll) in enumerate(POINTS):
        metrics = {"dev_em": dev_em, "dev_f1": dev_em + 0.05, "mll_nats_per_token": mll}
        study.add_trial(make_trial(family, number, metrics, objectives, epochs=[dev_em / 3, dev_em / 2, dev_em]))
    number = len(POINTS)
    study.add_trial(make_trial("random", number, None, objectives, TrialState.PRUNED, epochs=[0.05, 0.08]))
    study.add_trial(make_trial("span", number + 1, None, objectives, TrialState.FAIL,
                               failure="RuntimeError: <out of memory>"))
    study.add_trial(make_trial("entity", number + 2, None, objectives, TrialState.RUNNING, epochs=[0.1]))
    return study


def leaderboard() -> list[dict]:
    """Two rows, best first; the second carries a label that must not become markup."""
    common = {"seeds": 3, "seconds": 1234.5, "tokens": 1_200_000, "mll_nats_per_token": -2.4,
              "mll_nats_per_token_spread": 0.05, "dev_f1": 0.5, "dev_f1_spread": 0.01, "test_f1": None,
              "test_f1_spread": None}
    return [{"rank": 1, "label": "entity", "family": "entity", "source": "search", "trial": 9,
             "params": {"entity.keep": 0.8, "pretrain.steps": 200}, "dev_em": 0.48, "dev_em_spread": 0.02,
             "test_em": 0.46, "test_em_spread": 0.03, **common},
            {"rank": 2, "label": HOSTILE, "family": "learned", "source": "transfer", "trial": None,
             "params": {"learned.temperature": 0.5}, "dev_em": 0.38, "dev_em_spread": None, "test_em": 0.35,
             "test_em_spread": None, **common}]


CORRELATION = {"method": "spearman", "x": "mll_nats_per_token", "y": "dev_em", "rho": 0.4, "p_value": 0.2,
               "trials": 10}
# learned before entity: colouring by label order would swap them against the other figures
CURVES = {HOSTILE: {"family": "learned", "rate": [0.1, 0.9], "S": [-1.5, -2.5]},
          "entity": {"family": "entity", "rate": [0.1, 0.5, 0.9], "S": [-1.0, None, -3.0]}}


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every figure the report embeds, in order (each passes through ``png_base64``)."""
    seen = []
    encode = figures.png_base64
    monkeypatch.setattr(figures, "png_base64", lambda figure: seen.append(figure) or encode(figure))
    return seen


def section(text: str, name: str) -> str:
    return text.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]


def table(html: str) -> list[list[str]]:
    """The body rows of an HTML table as the text of their cells."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html.split("<tbody>", 1)[1], re.S)
    return [[" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in rows]


def render(tmp_path, objectives: Sequence[Objective], correlation=CORRELATION, rows=None, curves=None, **kwargs) -> str:
    rows = leaderboard() if rows is None else rows
    curves = CURVES if curves is None else curves
    study = kwargs.pop("study", None) or make_study(objectives)
    return write_report(tmp_path / "report.html", study, rows, correlation, curves, objectives, **kwargs).read_text()


def by_xlabel(drawn: list, xlabel: str) -> list:
    return [figure for figure in drawn if figure.axes[-1].get_xlabel() == xlabel]


def test_report_is_one_self_contained_page(tmp_path):
    text = render(tmp_path, [DEV_EM], title=f"search {HOSTILE}")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert re.findall(r'<section id="([^"]+)">', text) == list(SECTIONS)
    assert all('class="how"' in section(text, name) for name in SECTIONS)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(re.findall("<img ", text)) >= 7  # history, 4 importances, scatter, S_m, learning
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)


def test_user_text_is_escaped(tmp_path):
    text = render(tmp_path, [DEV_EM], title=f"search {HOSTILE}")
    assert HOSTILE not in text and "<title>search &lt;b&gt;x&lt;/b&gt;</title>" in text
    assert "search &lt;&amp;&gt; test" in text  # the study name
    assert "RuntimeError: &lt;out of memory&gt;" in section(text, "history")  # the failure reason


def test_tables_carry_the_numbers(tmp_path):
    text = render(tmp_path, [DEV_EM])
    assert "13 in all: 10 complete, 1 pruned, 1 failed, 1 running" in section(text, "summary")
    assert "#8, family <code>entity</code>:\ndev EM = 0.5000" in section(text, "summary")
    board = section(text, "leaderboard")
    assert board.count('<tr class="best">') == 1
    assert table(board)[0][6:] == ["0.480 ± 0.020", "0.500 ± 0.010", "0.460 ± 0.030", "—", "-2.400 ± 0.050", "—",
                                   "—", "1,234", "1,200,000", "3"]
    assert table(board)[1][:5] == ["2", "&lt;b&gt;x&lt;/b&gt;", "learned", "transfer", "—"]
    assert table(board)[1][6:9] == ["0.380", "0.500 ± 0.010", "0.350"]  # a spread unknown is left out
    assert "ρ = +0.40" in section(text, "mll") and "p = 0.2, 10 trials" in section(text, "mll")
    assert 'class="disagree"' not in text
    assert re.findall(r"Within family <code>(\w+)</code>", text) == ["entity", "random", "span"]  # 3+ trials each


def test_negative_correlation_is_called_a_disagreement(tmp_path):
    text = render(tmp_path, [DEV_EM], CORRELATION | {"rho": -0.6, "p_value": 0.04})
    assert 'class="disagree"' in section(text, "mll") and "ρ = -0.60" in text
    undefined = render(tmp_path, [DEV_EM], CORRELATION | {"rho": None, "p_value": None, "note": "no <spread>"})
    assert "ρ =" not in undefined and "no &lt;spread&gt;" in section(undefined, "mll")


def test_missing_data_is_explained_not_drawn(tmp_path):
    text = render(tmp_path, [DEV_EM], None, rows=[], curves={})
    for name in ("leaderboard", "curves"):
        assert "<img" not in section(text, name) and "<table" not in section(text, name)
        assert 'class="note"' in section(text, name)
    assert "No correlation" in section(text, "mll").split("<figcaption>")[1]
    empty = render(tmp_path, [DEV_EM], None, rows=[], curves={}, study=optuna.create_study(direction="maximize"))
    assert "<img" not in empty and "No trial has completed yet" in section(empty, "summary")
    for name in ("history", "importances", "mll", "learning-curves"):
        assert 'class="note"' in section(empty, name)


def test_one_completed_trial_explains_the_missing_importances(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(make_trial("span", 0, {"dev_em": 0.3, "dev_f1": 0.3, "mll_nats_per_token": None}, [DEV_EM]))
    text = render(tmp_path, [DEV_EM], None, study=study)
    assert "<img" not in section(text, "importances") and "the study has 1" in section(text, "importances")
    assert "#0, family <code>span</code>" in text and "<img" not in section(text, "mll")  # no MLL score: no scatter


def test_two_objectives_add_the_pareto_front(tmp_path, drawn):
    text = render(tmp_path, [DEV_EM, MLL])
    assert re.findall(r'<section id="([^"]+)">', text) == [*SECTIONS[:-1], "pareto", "learning-curves"]
    pareto = section(text, "pareto")
    front = sorted(int(n) for n in re.findall(r'<td class="num">#(\d+)</td>', pareto))
    assert front == [0, 1, 3, 4, 6, 8]  # the rest are dominated on (dev EM, MLL score)
    ringed = by_xlabel(drawn, MLL.label)[0].axes[0].collections[-1]  # the rings drawn over the family dots
    assert len(ringed.get_offsets()) == len(front)
    assert '<a href="#pareto">section 7</a>' in section(text, "summary")


@pytest.mark.parametrize("objectives", [[DEV_EM], [MLL], [DEV_EM, MLL]], ids=lambda o: "+".join(x.name for x in o))
def test_every_objective_value_carries_its_own_label(tmp_path, drawn, objectives):
    text = render(tmp_path, objectives)
    summary, first = section(text, "summary"), objectives[0]
    best = summary.split("Best trial", 1)[1].split("</td>", 1)[0]
    expected = {DEV_EM: "dev EM = 0.5000", MLL: "MLL score (nats/token) = -2.0000"}  # best by the first objective
    assert f"(by {first.label})" in best and expected[first] in best
    assert ("dev EM = " in best) == (DEV_EM in objectives)
    assert all(f"<strong>{o.label}</strong>" in summary for o in objectives)
    assert f"ranked by <strong>{first.label}</strong>" in section(text, "leaderboard")
    assert re.search(r'<th class="ranked">([^<]+)</th>', text).group(1) == first.label
    history = by_xlabel(drawn, "trial number")[0]
    assert [axis.get_ylabel() for axis in history.axes] == [o.label for o in objectives]
    learning = by_xlabel(drawn, "fine-tuning epoch")
    monitor = pruning_monitor(objectives)
    assert [figure.axes[0].get_ylabel() for figure in learning] == ([monitor.label] if monitor else [])
    scatter = by_xlabel(drawn, MLL.label)[0].axes[0]  # the MLL score against dev EM, from the trials' metrics
    assert scatter.get_ylabel() == DEV_EM.label
    assert sorted(tuple(xy) for c in scatter.collections[:4] for xy in c.get_offsets()) == sorted(
        (mll, dev_em) for _, dev_em, mll in POINTS)


def test_a_family_has_one_colour_in_every_figure(tmp_path, drawn):
    render(tmp_path, [DEV_EM])
    dots = by_xlabel(drawn, "trial number")[0].axes[0].collections
    history = {dot.get_label(): to_hex(dot.get_facecolor()[0]) for dot in dots if dot.get_label() in OWN_PARAMS}
    lines = by_xlabel(drawn, "masking rate m / D")[0].axes[0].lines
    curves = {line.get_label(): to_hex(line.get_color()) for line in lines}
    assert history["entity"] == curves["entity"] and history["learned"] == curves[HOSTILE]
    assert len(set(history.values())) == 4


def test_importances_leave_matplotlib_as_they_found_it(tmp_path):
    facecolor = matplotlib.rcParams["axes.facecolor"]
    render(tmp_path, [DEV_EM])
    assert matplotlib.rcParams["axes.facecolor"] == facecolor and pyplot.get_fignums() == []


def test_objectives_must_match_the_study(tmp_path):
    with pytest.raises(ValueError, match="objectives"):
        render(tmp_path, [DEV_EM], study=make_study([DEV_EM, MLL]))
    with pytest.raises(ValueError, match="directions"):
        render(tmp_path, [DEV_EM], study=optuna.create_study(direction="minimize"))


def test_a_failed_write_keeps_the_old_report_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("previous report")

    def refuse(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, optuna.create_study(direction="maximize"), [], None, {}, [DEV_EM])
    assert path.read_text() == "previous report" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")  # the target given is oriented
def test_importances_explain_a_high_first_objective_with_two_objectives():
    """PED-ANOVA treats a low target as good; the report must rate what makes the first objective high."""
    single, double = optuna.create_study(direction="maximize"), optuna.create_study(directions=["maximize"] * 2)
    for number in range(30):
        near, noise = (number * 0.37) % 1.0, (number * 0.61) % 1.0
        trial = {"params": {"near": near, "noise": noise},
                 "distributions": {"near": FloatDistribution(0, 1), "noise": FloatDistribution(0, 1)}}
        dev_em = 1.0 - abs(near - 0.8) + 0.05 * noise
        single.add_trial(create_trial(values=[dev_em], **trial))
        double.add_trial(create_trial(values=[dev_em, noise], **trial))
    expected = optuna.importance.get_param_importances(single)
    assert max(expected, key=expected.get) == "near"
    rated = optuna.importance.get_param_importances(double, target=importance.target(double))
    assert rated == pytest.approx(expected)


def test_metric_labels_come_from_the_objectives():
    assert page.metric_label("dev_em") == DEV_EM.label and page.metric_label("mll_nats_per_token") == MLL.label


def test_probe_and_fine_tuning_values_are_drawn_apart_each_from_step_zero(tmp_path, drawn):
    """One step axis, two signals: probe values at pre-training steps, dev EM after the offset, in two figures."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("pruning", {"probe_every": 100, "probe_target": "entities", "finetune_offset": 401,
                                    "finetune_monitor": "dev/em"})
    full = {100: -4.0, 200: -3.5, 300: -3.2, 400: -3.0, 401: 0.1, 402: 0.2}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.2, params={"family": "entity"},
                                 distributions={"family": FAMILIES}, intermediate_values=full))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"family": "random"},
                                 distributions={"family": FAMILIES}, intermediate_values={100: -5.0, 200: -4.9}))
    write_report(tmp_path / "report.html", study, [], None, {}, [DEV_EM])
    probe, = by_xlabel(drawn, "pre-training step")
    finetuning, = by_xlabel(drawn, "fine-tuning epoch")
    assert probe.axes[0].get_ylabel().startswith("entities-token score")
    lines = [line.get_xydata().tolist() for line in probe.axes[0].lines if line.get_marker() != "x"]
    assert sorted(lines) == [[[100, -5.0], [200, -4.9]], [[100, -4.0], [200, -3.5], [300, -3.2], [400, -3.0]]]
    assert [line.get_xydata().tolist() for line in probe.axes[0].lines if line.get_marker() == "x"] == [[[200, -4.9]]]
    assert [line.get_xydata().tolist() for line in finetuning.axes[0].lines] == [[[0, 0.1], [1, 0.2]]]
    history, = by_xlabel(drawn, "trial number")  # a probe value (nats) is no dev EM: no cross for that trial
    assert all(y >= 0 for c in history.axes[0].collections for _, y in c.get_offsets())
    assert not [line for line in history.axes[0].lines if line.get_marker() == "x"]
