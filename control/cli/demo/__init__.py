"""`poolmta demo`: the whole story on loopback, in one command (see `main`)."""
