"""Run reports: one self-contained HTML page per nightly run (see :mod:`omnifer.report.facts`).

``omnifer.report.build_report(catalog, run_id=None, date=None, out=None)`` is the documented
entry point (the CLI's ``omnifer report`` and the nightly flow call it).
"""

from omnifer.report.build import build_report
from omnifer.report.facts import SAMPLES_PER_CLASS, ReportFacts, collect, find_run, report_uri

__all__ = ["SAMPLES_PER_CLASS", "ReportFacts", "build_report", "collect", "find_run",
           "report_uri"]
