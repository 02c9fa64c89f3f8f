"""Analysis of a sweep's results: counts, time to threshold, cost, forward vs backprop, figures.

    report = analyze(["path/to/experiment"], "report-dir", by=["model", "method"])
    print(report.summary)

`incidence` holds the estimators on plain arrays (cumulative incidence of reaching the threshold
with divergence competing, medians, forward/backprop comparisons; typed results), `stats` the
tables built from the results frames, `plots` the figures, `report` the Markdown / HTML writers;
`scaling` and `fair` add the views of size sweeps and of tuned sweeps (`tune:`).
"""

from fgray.analysis.core import Loaded, Report, analyze, load_all, load_experiments
from fgray.analysis.errors import AnalysisError
from fgray.analysis.incidence import (
    Event,
    IncidenceCurve,
    MedianComparison,
    TimeEstimate,
    compare_medians,
    conditional_incidence,
    conditional_median_time,
    cumulative_incidence,
    median_time,
    time_to_fraction,
)
from fgray.analysis.stats import counts, method_ratios

__all__ = [
    "AnalysisError",
    "Event",
    "IncidenceCurve",
    "Loaded",
    "MedianComparison",
    "Report",
    "TimeEstimate",
    "analyze",
    "compare_medians",
    "conditional_incidence",
    "conditional_median_time",
    "counts",
    "cumulative_incidence",
    "load_all",
    "load_experiments",
    "median_time",
    "method_ratios",
    "time_to_fraction",
]
