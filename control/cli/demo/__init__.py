"""`poolmta demo`: the whole story on loopback, in one command (`main` tells it).

    plan        what the demo builds and sends: the account's Pools and Bridges, the options
    stack       the stack of processes: embedded Redis, control plane, data plane, sink
    provision   the product flow through the gRPC API: server, account, Pools, IPs, Bridges
    traffic     the messages, and sending them through the Bridges (SMTP AUTH, and REST)
    channels    the REST Bridge as the demo's second channel, and each channel's mail checked
    verify      reading the figures back and checking they add up
    report      what the demo prints, built from the CLI's renderers
    main        the run, and `poolmta demo`'s command line

`stack` and `provision` also stand poolmta up for the load harness (`bench/load.py`).
"""


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""
