"""Figures of a score's per-rate curve; written by the caller (``results.files.write_png``)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from maskpolicy.meta.results.schema import FixedRatePoint, RateCurveRecord


def rate_curve_figure(
    curve: RateCurveRecord,
    title: str,
    exact_per_token: float | None = None,
    estimate_per_token: float | None = None,
    fixed_rates: Sequence[FixedRatePoint] = (),
    exact_label: str = "exact log p(x)/D",
) -> Figure:
    """S_m (nats/token) against the masking rate m/D, with reference lines.

    The exact log p(x)/D is the mean height of the curve; a fixed-rate estimate D·S_m
    is the curve's height at one rate, so its distance from the exact line is its bias.
    ``exact_label`` names the exact value (a targeted score's is log p(x_A | x_rest)/|A|).
    """
    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(figure)  # a canvas of its own: no pyplot state, no display needed
    axis = figure.subplots()
    drawn = [(rate, value) for rate, value in zip(curve.rate, curve.S, strict=True) if value is not None]
    axis.plot(*zip(*drawn, strict=True), marker="o", markersize=3, label="S_m (per-rate mean log-prob)")
    if exact_per_token is not None:
        axis.axhline(exact_per_token, color="black", linestyle="--", label=f"{exact_label} = {exact_per_token:.4f}")
    if estimate_per_token is not None:
        axis.axhline(estimate_per_token, color="tab:green", linestyle=":",
                     label=f"cumulative estimate/D = {estimate_per_token:.4f}")
    for point in fixed_rates:
        axis.plot(point.rate_used, point.nats_per_token, marker="s", color="tab:red", linestyle="none")
        axis.annotate(f"{point.rate:.0%}", (point.rate_used, point.nats_per_token), textcoords="offset points",
                      xytext=(4, 4), fontsize=8, color="tab:red")
    if fixed_rates:
        axis.plot([], [], marker="s", color="tab:red", linestyle="none", label="fixed-rate estimates D·S_m / D")
    axis.set_xlabel("masking rate m / D")
    axis.set_ylabel("nats per token")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
