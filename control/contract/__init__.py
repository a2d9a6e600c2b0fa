"""The contract between the control plane and the data plane: every name and
format both planes must agree on, defined once.

This package imports nothing else of `control` (a test enforces it), so the data
plane can import it without pulling in the control plane: the data plane imports
only `_fastpath` and `control.contract`.
"""
