"""The one exception the analysis raises for input it cannot use."""

from __future__ import annotations


class AnalysisError(Exception):
    """Bad input to the analysis (no results, empty sweep, unknown --by key); a one-line message
    that says what is wrong and what to do, so the CLI can print it instead of a traceback."""
