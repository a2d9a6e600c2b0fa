# cython: language_level=3
"""The call-overhead floor the fast-path benchmarks compare against."""


def noop(object value):
    """Return `value` unchanged: the cheapest Python-visible call into Cython."""
    return value
