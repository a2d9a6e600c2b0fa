"""Crash safety: a worker killed with SIGKILL while 500 messages are in flight.
Every message that got a 250 is in the spool after the restart, byte-identical
to what the client sent (below the stamped headers), and no partial write is
left behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import aiosmtplib
import pytest

from dataplane import spool
from tests.dataplane_support import (
    Dataplane,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
    stamped_prefix_and_original,
)
from tests.support import wait_until

# Every test here starts and kills data-plane processes.
pytestmark = pytest.mark.slow

SERVER = 3
SECRET = "s3cret"
MESSAGES = 500
CLIENTS = 250  # concurrent sessions: most of the 500 messages are in flight at once
KILL_AFTER = 100  # acceptances before the SIGKILL


def _body(n: int, rng: random.Random) -> bytes:
    lines = [f"line {i} of message {n} {'x' * rng.randrange(0, 900)}".encode() for i in range(rng.randrange(1, 60))]
    lines.insert(len(lines) // 2, b".a line that starts with a dot")
    return b"\r\n".join(lines) + b"\r\n"


async def _client(port: int, username: str, numbers: list[int], originals: dict[int, bytes],
                  accepted: dict[str, int], failures: list[str]) -> None:
    """Send each message, reconnecting after a lost connection (a message without a
    250 is sent again, as a real client would)."""
    pending = list(numbers)
    client = None
    attempts = 0
    while pending:
        try:
            if client is None:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
                await client.connect()
                await client.login(username, SECRET)
            n = pending[0]
            errors, reply = await client.sendmail("sender@example.com", [f"rcpt{n}@example.net"], originals[n])
            assert not errors
            accepted[queued_id(reply)] = n
            pending.pop(0)
        except (aiosmtplib.SMTPException, OSError) as exc:
            failures.append(repr(exc))
            attempts += 1
            assert attempts < 50, f"too many failures: {failures[-5:]}"
            if client is not None:
                client.close()
            client = None
            await asyncio.sleep(0.1)
    if client is not None:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()  # every message has its 250: a kill during QUIT loses nothing


async def _send_all(plane: Dataplane, username: str, originals: dict[int, bytes]):
    accepted: dict[str, int] = {}
    failures: list[str] = []
    victim = plane.worker_pids()[0]

    async def killer() -> None:
        while len(accepted) < KILL_AFTER:
            await asyncio.sleep(0.001)
        os.kill(victim, signal.SIGKILL)

    numbers = list(originals)
    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(
        _client(plane.port, username, numbers[i::CLIENTS], originals, accepted, failures)
        for i in range(CLIENTS)
    ))
    await kill_task
    return accepted, failures, victim


def test_sigkill_with_messages_in_flight_loses_no_accepted_message(redis_client, redis_url, tmp_path):
    pool = make_pool(41, [("192.0.2.41", 1), ("192.0.2.42", 3)], server_id=SERVER)
    bridge = make_bridge(1, 41, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    rng = random.Random(4)
    originals = {n: message(n, body=_body(n, rng)) for n in range(MESSAGES)}

    plane = Dataplane(tmp_path / "dp", redis_url, SERVER, workers=2).start()
    try:
        accepted, failures, victim = asyncio.run(_send_all(plane, bridge.username, originals))
        assert len(accepted) >= MESSAGES and failures, "the kill should have cut some sessions"
        # The supervisor restarts the killed worker.
        assert wait_until(lambda: plane.worker_pids()[0] != victim, 30), plane.log()
    finally:
        assert plane.stop() == 0

    # Restart on the same data directory: start-up recovery runs, then every 250 is there.
    restarted = Dataplane(tmp_path / "dp", redis_url, SERVER, workers=1).start()
    try:
        assert " 0 quarantined" in restarted.log()
        assert os.listdir(restarted.spool_dir / spool.TMP_DIR) == []
        queued = set(spool.queued_ids(restarted.spool_dir))
        assert set(accepted) <= queued
        for message_id, n in accepted.items():
            record = restarted.record(message_id)  # reads and verifies the checksum
            prefix = stamped_prefix_and_original(record, originals[n])
            assert prefix.startswith(b"Received: from ") and b"x-virtual-mta: " + pool.internal_name.encode() in prefix
            assert record.rcpt_tos == (f"rcpt{n}@example.net",)
            assert record.ip in ("192.0.2.41", "192.0.2.42")
    finally:
        assert restarted.stop() == 0
