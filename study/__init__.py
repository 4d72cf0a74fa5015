"""study: the study layer on top of the toolkit: behavioural evaluation (the paper's E1 and
What'sUp, :mod:`study.evaluate`, its tables and plot :mod:`study.evaluate_report`, What'sUp scoring
:mod:`study.whatsup_metrics`), the whole-study demo (:mod:`study.demo`, ``spatialbind demo``) and
its self-contained HTML report (:mod:`study.report`).
"""
