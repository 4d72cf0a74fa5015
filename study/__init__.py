"""study: the study layer on top of the toolkit: behavioural evaluation (the paper's E1 and
What'sUp, :mod:`study.evaluate`, its tables and plot :mod:`study.evaluate_report`, What'sUp scoring
:mod:`study.whatsup_metrics`), the whole-study demo (:mod:`study.demo`, ``spatialbind demo``) and
its self-contained HTML report (:mod:`study.report`).

Public API (imported lazily)::

    res = study.evaluate(study.EvalConfig(model="tiny-qwen2-vl", data="data/sq"))
    res.summary; res.predictions; res.save("out/e1")
    study.run_demo(study.DemoConfig(out="out/demo"))      # the whole study, report.html
"""
from __future__ import annotations

from common import lazy_exports

# ``study.evaluate`` is the function: the module of the same name is imported here first (it is
# light: no torch), so the package attribute stays bound to the function; use
# ``from study.evaluate import ...`` for the rest of the module.
from .evaluate import PROTOCOLS, EvalConfig, EvalResult, evaluate

_EXPORTS = {
    "format_table": "evaluate_report",
    "pair_set_accuracy": "whatsup_metrics", "wilson_interval": "whatsup_metrics",
    "DemoConfig": "demo", "run_demo": "demo", "write_report": "report",
}

__getattr__, __dir__, __all__ = lazy_exports(
    __name__, _EXPORTS, eager=("EvalConfig", "EvalResult", "PROTOCOLS", "evaluate"))
