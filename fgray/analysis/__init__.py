"""Analysis of a sweep's results: counts, time to threshold, cost, forward vs backprop, figures.

    report = analyze(["path/to/experiment"], "report-dir", by=["model", "method"])
    print(report.summary)

`stats` holds the pure statistics (Kaplan-Meier medians, bootstrap ratios), `plots` the figures,
`report` the Markdown / HTML writers.
"""

from fgray.analysis.core import Report, analyze, load_all
from fgray.analysis.errors import AnalysisError
from fgray.analysis.stats import counts, km_median, method_ratios

__all__ = ["AnalysisError", "Report", "analyze", "counts", "km_median", "load_all", "method_ratios"]
