"""A destination that accepts the TCP connection and never answers does not block
delivery to another destination, even from the same source IP: it holds only its
own share of connections (the per-destination limit), and the rest keep flowing."""

from __future__ import annotations

import socket
import threading

from dataplane import spool
from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    send_all,
    stats_of,
)
from tests.support import wait_until

SERVER = 4
SECRET = "s3cret"
IP = "127.0.0.10"


class Silent:
    """Accepts TCP connections on loopback and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_silent_destination_does_not_block_the_others(redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(15, [(IP, 1)], server_id=SERVER)],
                                        [make_bridge(1, 15, SECRET)]))
    silent = Silent()
    try:
        sink = start_sink()
        plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
            "--route", f"silent.example=127.0.0.1:{silent.port}", "--route", f"*={sink.address}",
            "--max-conn-per-ip", "4", "--max-conn-per-destination", "2"])
        # Silent-destination messages first, so their connections are opened first.
        plan = [(n, [f"rcpt{n}@silent.example"], message(n)) for n in range(20)]
        plan += [(n, [f"rcpt{n}@example.net"], message(n)) for n in range(20, 220)]
        ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=1)

        assert wait_until(lambda: sink.counts().get("accepted") == 200, timeout=60), sink.counts()
        assert wait_until(lambda: stats_of(redis_client, SERVER, 15, [])["pool"]["delivered"] == 200,
                          timeout=10)
        queued = set(spool.queued_ids(plane.spool_dir))
        assert queued == {ids[n] for n in range(20)}  # the silent destination's, still waiting
        assert 1 <= len(silent.held) <= 2  # its share of connections, no more
        assert plane.stop() == 0  # the hung connections do not hold up a stop
        assert "Traceback" not in plane.log()
    finally:
        silent.close()
