"""`poolmta sink` (``python -m dataplane.sink``): a destination MTA for demos, tests
and benchmarks.

It accepts every message, or answers per recipient by rule (`rules`:
``bounce*=550``, ``defer*=451x2``, ``slow*=delay:2.0`` by default), and records the
address each client connected FROM: that is what proves mail left from a Pool's IP.

One module per concern, each documenting the files it owns (the spec other
processes read):

`config`  the flags and `SinkConfig`.
`rules`   the rule grammar and matching (pure).
`server`  the SMTP handler and protocol, the process; the ``--log`` and ``--store`` files.
`counts`  the counters, the ``--counts-file`` and the printed report.
"""
