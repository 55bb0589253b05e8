"""Descriptive statistics for plain Python sequences."""


def mean(values):
    """Arithmetic mean of `values`."""
    if not values:
        raise ValueError("mean() of an empty sequence")
    return sum(values) / len(values)


def median(values):
    """Middle value of `values` (the mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median() of an empty sequence")
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid]
