"""The report as a browser shows it: headless Chromium renders a realistic report, every section is there, every
image decodes, nothing overflows the window, and the screenshot is not a blank page."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from maskpolicy.meta.search.objectives import DEV_EM, MLL, pruning_monitor
from maskpolicy.meta.search.report import write_report

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed; on Debian or Ubuntu: apt-get install chromium")]
WINDOW = (1280, 2400)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
FAMILIES = {"random": {"random.rate": FloatDistribution(0.05, 0.5)},
            "span": {"span.mean_length": IntDistribution(1, 10), "span.rate": FloatDistribution(0.05, 0.5)},
            "entity": {"entity.rate": FloatDistribution(0.05, 0.5), "entity.keep_other": FloatDistribution(0, 1)},
            "learned": {"learned.temperature": FloatDistribution(0.1, 2.0, log=True),
                        "learned.sampling": CategoricalDistribution(["topk", "gumbel"])}}
SKILL = {"random": 0.05, "span": 0.15, "entity": 0.30, "learned": 0.60}  # dev EM a family tends to reach
# reports the page's sections, its images that failed to load and its width, once everything has loaded
CHECK = """<script>addEventListener("load", () => {
  const images = [...document.images], out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({sections: [...document.querySelectorAll("section > h2")].map(h => h.parentNode.id),
    images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    width: document.documentElement.scrollWidth, window: innerWidth});
  document.body.append(out);
});</script>"""

optuna.logging.set_verbosity(optuna.logging.WARNING)


def realistic_study(objectives) -> optuna.Study:
    """Forty trials of four families: dev EM rising with a family's skill, the MLL score falling with it."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(study_name="bioworld-search", directions=[o.direction for o in objectives])
    names = list(FAMILIES)
    for number in range(40):
        family = names[number % 4]
        params = {"family": family, "pretrain.steps": int(rng.choice([1500, 3000, 4500]))}
        distributions = {"family": CategoricalDistribution(names), "pretrain.steps": IntDistribution(1500, 4500, 1500)}
        for name, distribution in FAMILIES[family].items():
            params[name] = (rng.choice(distribution.choices).item() if isinstance(distribution, CategoricalDistribution)
                            else int(rng.integers(distribution.low, distribution.high + 1))
                            if isinstance(distribution, IntDistribution) else rng.uniform(distribution.low,
                                                                                          distribution.high))
            distributions[name] = distribution
        dev_em = float(np.clip(SKILL[family] + rng.normal(0, 0.06), 0, 1))
        metrics = {"dev_em": dev_em, "dev_f1": min(dev_em + 0.04, 1.0), "mll_nats_per_token": -2.0 - 2 * dev_em
                   + float(rng.normal(0, 0.1))}
        state = (TrialState.FAIL if number in (13, 27) else
                 TrialState.PRUNED if pruning_monitor(objectives) and number % 7 == 5 else TrialState.COMPLETE)
        epochs = [dev_em * (1 - 0.6 ** epoch) for epoch in range(1, 7 if state == TrialState.COMPLETE else 3)]
        study.add_trial(create_trial(
            state=state, params=params, distributions=distributions,
            values=[metrics[o.metric] for o in objectives] if state == TrialState.COMPLETE else None,
            user_attrs={"seconds": 300.0, "tokens": 2_000_000} | (
                {"failure": "RuntimeError: CUDA out of memory"} if state == TrialState.FAIL else {"metrics": metrics}),
            intermediate_values=dict(enumerate(epochs)) if pruning_monitor(objectives) else None))
    return study


def leaderboard_and_curves(objectives) -> tuple[list[dict], dict]:
    """One row per family plus a transferred learned policy, best first by the first objective, and their S_m
    curves."""
    rows, curves = [], {}
    labels = [("learned", "learned"), ("learned-squad", "learned"), ("entity", "entity"), ("span", "span"),
              ("random", "random")]
    rates = np.linspace(0.05, 0.95, 10)
    for label, family in labels:
        dev_em = SKILL[family] - 0.05 * (label != family)
        row = {"label": label, "family": family, "source": "transfer" if label != family else "search",
               "trial": None if label != family else len(rows) * 4, "params": {"pretrain.steps": 4500}, "seeds": 3,
               "seconds": 310.0, "tokens": 2_000_000}
        for metric, value in {"dev_em": dev_em, "dev_f1": dev_em + 0.04, "test_em": dev_em - 0.02,
                              "test_f1": dev_em + 0.01, "mll_nats_per_token": -2.0 - 2 * dev_em}.items():
            row[metric], row[f"{metric}_spread"] = value, 0.02
        rows.append(row)
        values = (-1.5 - 2.5 * rates - 0.8 * SKILL[family] - 0.2 * (label != family)).tolist()
        curves[label] = {"family": family, "rate": rates.tolist(), "S": values[:7] + [None] + values[8:]}
    rows.sort(key=lambda row: objectives[0].sign * row[objectives[0].metric], reverse=True)
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)], curves


def realistic_report(path: Path, objectives) -> Path:
    rows, curves = leaderboard_and_curves(objectives)
    correlation = {"method": "spearman", "x": "mll_nats_per_token", "y": "dev_em", "rho": -0.81, "p_value": 2e-9,
                   "trials": 35}
    return write_report(path, realistic_study(objectives), rows, correlation, curves, objectives,
                        title="maskpolicy search: bioworld")


def chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per run
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                           *arguments], capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.parametrize("objectives", [[DEV_EM], [DEV_EM, MLL]], ids=["dev_em", "dev_em+mll"])
def test_the_report_renders_every_section_and_image(tmp_path, objectives):
    page = realistic_report(tmp_path / "report.html", objectives)
    expected = re.findall(r'<section id="([^"]+)">', page.read_text())
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    result = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", checked.as_uri())
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page did not finish loading: {result.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["sections"] == expected and len(expected) == 7 + (len(objectives) > 1)
    assert check["images"] >= 7 and check["broken"] == []
    assert check["width"] <= check["window"]  # nothing wider than the window: no sideways scrolling


def test_the_report_screenshot_is_a_page(tmp_path):
    page = realistic_report(tmp_path / "report.html", [DEV_EM])
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", shot.read_bytes()[16:24]) == WINDOW  # the IHDR chunk's width and height
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text and figures drawn
