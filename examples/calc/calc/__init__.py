"""A tiny statistics package, used by `comem demo`."""

from calc.stats import mean, median

__all__ = ["mean", "median"]
