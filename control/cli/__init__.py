"""Composition: the `poolmta` command line, the server runners and the demo.

Everything that puts the parts of poolmta together lives here; the control plane
proper (servicers, registry, store, publisher) never imports it. `poolmta` is
`control.cli.main:main`; `python -m control.cli` runs the same.
"""
