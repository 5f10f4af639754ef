"""Selector API, registry and the built-in selectors (importing this package registers them)."""

from selectbench.selectors.base import (
    Budget,
    BudgetError,
    ScoreSelector,
    Selection,
    Selector,
    make_selection,
    parse_budget,
    resolve_budget,
    selector_params,
    top_k,
)
from selectbench.selectors.lookup import available, get_selector_class, make_selector
from selectbench.selectors.registry import register

__all__ = [
    "Budget",
    "BudgetError",
    "ScoreSelector",
    "Selection",
    "Selector",
    "available",
    "get_selector_class",
    "make_selection",
    "make_selector",
    "parse_budget",
    "register",
    "resolve_budget",
    "selector_params",
    "top_k",
]
