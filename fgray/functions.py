"""The 2-D test functions as plain formulas: f(x, y) on any array type (numpy or torch), with the
classic start and the minimum.

`fgray.models` wraps them as modules to train; the analysis draws their contours from the same
formulas without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TestFunction:
    """f(x, y) written with + - * ** only, so numpy arrays and torch tensors both work."""

    __test__ = False  # not a pytest class
    value: Callable[[Any, Any], Any]
    start: tuple[float, float]
    minimum: tuple[float, float]


def sphere(x: Any, y: Any) -> Any:
    """x² + y², minimum 0 at (0, 0)."""
    return x**2 + y**2


def rosenbrock(x: Any, y: Any) -> Any:
    """(1 - x)² + 100 (y - x²)², minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(x: Any, y: Any) -> Any:
    """(1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)², minimum 0 at (3, 0.5)."""
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


FUNCTIONS: dict[str, TestFunction] = {
    "sphere": TestFunction(sphere, start=(1.5, -1.0), minimum=(0.0, 0.0)),
    "rosenbrock": TestFunction(rosenbrock, start=(-1.2, 1.0), minimum=(1.0, 1.0)),
    "beale": TestFunction(beale, start=(1.0, 1.0), minimum=(3.0, 0.5)),
}
