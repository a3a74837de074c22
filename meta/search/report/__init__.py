"""The search's closing report: one self-contained HTML page a researcher can open offline.

``report.html.j2`` is the page (inline style, no scripts, autoescaped); :mod:`.figures` draws the
matplotlib figures, embedded as base64 PNGs, one colour per policy family in all of them;
:mod:`.importance` has Optuna rate the parameters; :mod:`.page` reads the values out of the study
and renders. Every objective value is named by its :class:`~maskpolicy.meta.search.objectives.Objective`.
"""

from maskpolicy.meta.search.report.page import write_report

__all__ = ["write_report"]
