"""The REST Bridge remembers credentials a client proved (`bridge_auth.ProvenCredentials`)
so that its next requests skip the AUTH throttle's round trip to Redis, and nothing
more: a rotated secret or a revoked Bridge fails at the snapshot that changes it, every
failure is still counted by the shared throttle, and a blocked client gets through only
with credentials it proved itself before (one worker here, so which worker remembers is
known; the shared count across workers is `test_rest_errors`'s and `test_auth_throttle`'s).
Each wrong credential counts in `poolmta_auth_failures_total`, as a failed SMTP AUTH does.
"""

from __future__ import annotations

import aiohttp

from control.contract.secrets import hash_secret
from dataplane.bridge_auth import ProvenCredentials
from tests.dataplane_support import make_bridge, make_pool, make_snapshot, publish
from tests.rest_support import RestClient, assert_problem, basic
from tests.support import scrape_metrics

SERVER = 1
OLD_SECRET = "s3cret-before-rotation"
NEW_SECRET = "s3cret-after-rotation"
OTHER_SECRET = "s3cret-other"
LETTER = {"from": "shop@example.com", "to": "ann@example.net", "subject": "hi", "text": "hello"}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_proven_credentials_expire_are_bounded_and_name_the_secret_hash():
    clock = _Clock()
    proven = ProvenCredentials(ttl=10.0, capacity=2, clock=clock)
    ann = make_bridge(1, 7, OLD_SECRET)
    bob = make_bridge(2, 7, OTHER_SECRET)
    proven.remember("192.0.2.1", ann)
    assert proven.proven("192.0.2.1", ann)
    assert not proven.proven("192.0.2.9", ann)  # another client has proved nothing
    rotated = make_bridge(1, 7, NEW_SECRET)
    assert rotated.secret_hash == hash_secret(NEW_SECRET)
    assert not proven.proven("192.0.2.1", rotated)  # a new secret hash is not the one proved
    clock.now += 10.0
    assert not proven.proven("192.0.2.1", ann) and len(proven) == 0  # expired and forgotten
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        proven.remember(client, bob)
    assert len(proven) == 2 and not proven.proven("192.0.2.1", bob)  # the least recently used went


async def test_rotation_and_revocation_take_effect_at_the_snapshot_and_failures_still_count(
        redis_client, redis_url, start_dataplane):
    pool = make_pool(7, [("127.0.0.2", 1)])
    rotating = make_bridge(1, 7, OLD_SECRET)
    revoked = make_bridge(2, 7, OTHER_SECRET)
    untried = make_bridge(3, 7, OTHER_SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [rotating, revoked, untried]))
    plane = start_dataplane(redis_url, SERVER, workers=1, args=["--auth-block-after", "3", "--auth-delay-after", "10"])

    async with aiohttp.ClientSession() as session:
        def as_(username: str, secret: str) -> RestClient:
            return RestClient(session, plane.http_port, basic(username, secret))

        assert (await as_(rotating.username, OLD_SECRET).send_json(LETTER)).status == 202
        assert (await as_(rotating.username, OLD_SECRET).send_json(LETTER)).status == 202  # proven: no round trip
        assert (await as_(revoked.username, OTHER_SECRET).send_json(LETTER)).status == 202

        # Version 2 rotates the first Bridge's secret and revokes the second.
        publish(redis_client, make_snapshot(SERVER, 2, [pool], [make_bridge(1, 7, NEW_SECRET), untried]))
        plane.wait_version(redis_client, 2)
        assert_problem(await as_(rotating.username, OLD_SECRET).send_json(LETTER), 401)  # failure 1
        assert_problem(await as_(revoked.username, OTHER_SECRET).send_json(LETTER), 401)  # failure 2
        assert (await as_(rotating.username, NEW_SECRET).send_json(LETTER)).status == 202  # checked, then proven

        # The third failure blocks the client: counted by the shared throttle as before.
        assert_problem(await as_(rotating.username, "wrong").send_json(LETTER), 429)
        assert_problem(await as_(untried.username, OTHER_SECRET).send_json(LETTER), 429)  # right, never proven
        assert_problem(await as_(rotating.username, OLD_SECRET).send_json(LETTER), 429)  # the old secret
        # Credentials this client proved a moment ago tell it nothing new: still accepted.
        assert (await as_(rotating.username, NEW_SECRET).send_json(LETTER)).status == 202

    # Every wrong credential is an AUTH failure on the scrape, those refused while blocked too.
    failures = scrape_metrics(f"127.0.0.1:{plane.metrics_port}")["poolmta_auth_failures_total"]
    assert sum(failures.values()) == 4
