"""A routing change read at the cost of what it touched (control.routing_changes):
the publisher's remembered routing after incremental publications is SQLite's at
every step, a one-pool change reads that pool only, a crash between commit and
publication still converges, and the periodic check repairs a divergence."""

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control import models
from control.contract import dkim_seal, snapshot
from control.errors import DomainError
from control.publisher import SnapshotPublisher
from control.registry import Registry
from control.snapshot_builder import build_snapshot
from control.store import Store
from tests.control_support import current_snapshot
from tests.scale_support import add_pools

ACTIONS = ("create_pool", "delete_pool", "provision_ip", "release_ip", "assign_ip", "pause_ip", "resume_ip",
           "weigh_ip", "headers", "feed_type", "create_bridge", "revoke_bridge", "networks", "dkim_add",
           "dkim_delete", "server_bounce_domain", "pool_bounce_domain", "shared_ip")


class World:
    """A real registry on a SQLite file, two MTA servers, two accounts, and a publisher on real Redis."""

    def __init__(self, data_dir: Path, redis_url: str, **publisher_options) -> None:
        self.store = Store.open(data_dir / "poolmta.db")
        self.registry = Registry(self.store, dkim_master_key=dkim_seal.load_or_create_master_key(data_dir))
        self.servers = [self.registry.register_server(f"mta{n}.example.net", "eu").server_id for n in range(2)]
        self.accounts = [self.registry.create_account(f"acct{n}", "PRO")[0] for n in range(2)]
        self.redis = aioredis.Redis.from_url(redis_url)
        self.publisher = SnapshotPublisher(self.store, self.redis, **publisher_options)
        self.next_ip = 1

    async def close(self) -> None:
        """Close the publisher, Redis client and store."""
        self.publisher.close()
        await self.redis.aclose()
        self.store.close()

    def _rows(self, sql: str) -> list:
        with self.store.read() as s:
            return s._all(sql)

    def _pick(self, sql: str, n: int):
        rows = self._rows(sql)
        return rows[n % len(rows)] if rows else None

    def do(self, action: str, a: int, b: int) -> None:
        """Apply one registry operation chosen by `action`, on objects picked by `a` and `b`;
        a refusal by the domain rules is a fine outcome."""
        reg, account, server_id = self.registry, self.accounts[a % 2], self.servers[b % 2]
        pool = self._pick(f"SELECT smtp_id, user_id FROM pools WHERE user_id = {account.user_id} ORDER BY smtp_id", b)
        ip = self._pick(f"SELECT address FROM ips WHERE user_id = {account.user_id} ORDER BY address", a + b)
        bridge = self._pick(f"SELECT bridge_id FROM bridges WHERE user_id = {account.user_id} "
                            "AND revoked_at IS NULL ORDER BY bridge_id", b)
        try:
            if action == "create_pool":
                reg.create_pool(account, label=f"p{a}-{b}-{self.next_ip}", server_id=server_id)
                self.next_ip += 1
            elif pool is None:
                reg.provision_ip(account, address=self._address(), server_id=server_id)
            elif action == "delete_pool":
                idle = self._pick(f"SELECT smtp_id FROM pools WHERE user_id = {account.user_id} AND is_default = 0 "
                                  "AND smtp_id NOT IN (SELECT smtp_id FROM bridges WHERE revoked_at IS NULL) "
                                  "AND smtp_id NOT IN (SELECT smtp_id FROM ips) "
                                  "ORDER BY smtp_id", a)
                reg.delete_pool(account, (idle or pool)[0])
            elif action == "provision_ip":
                reg.provision_ip(account, address=self._address(), smtp_id=pool[0])
            elif action == "headers":
                reg.set_pool_headers(account, pool[0], [("X-Campaign", f"c{a}")] * (b % 2))
            elif action == "feed_type":
                reg.set_pool_feed_type(account, pool[0], f"feed{a}")
            elif action == "pool_bounce_domain":
                reg.set_pool_bounce_domain(account, pool[0], f"b{a}.example.org" if b % 2 else "")
            elif action == "create_bridge":
                reg.create_bridge(account, name=f"br{self.next_ip}", smtp_id=pool[0])
                self.next_ip += 1
            elif action == "dkim_add":
                reg.generate_dkim_key(account, f"d{b % 3}.example.com", "ed25519")
            elif action == "dkim_delete":
                key = self._pick(f"SELECT key_id FROM dkim_keys WHERE user_id = {account.user_id} ORDER BY key_id", b)
                if key is not None:
                    reg.retire_dkim_key(account, key[0], force=True) if a % 2 else reg.delete_dkim_key(account, key[0])
            elif action == "server_bounce_domain":
                reg.set_server_bounce_domain(server_id, f"bounce{a}.example.net")
            elif action == "shared_ip":
                reg.provision_shared_ip(server_id, self._address(), 1, "")
            elif bridge is not None and action == "revoke_bridge":
                reg.revoke_bridge(account, bridge[0])
            elif bridge is not None and action == "networks":
                reg.set_bridge_trusted_networks(account, bridge[0], [f"192.0.2.{a % 250}/32"])
            elif ip is None:
                return
            elif action == "release_ip":
                reg.release_ip(account, ip[0])
            elif action == "assign_ip":  # to another pool of the IP's server
                target = self._pick(f"SELECT p.smtp_id FROM pools p JOIN ips i ON i.address = '{ip[0]}' "
                                    f"WHERE p.user_id = {account.user_id} AND p.server_id = i.server_id "
                                    "AND p.smtp_id != i.smtp_id ORDER BY p.smtp_id", b)
                if target is None:
                    return
                op = reg.assign_pool(account, ip[0], target[0])
                if op.state == models.OP_QUEUED:
                    reg.apply_operation(op.operation_id)
            elif action == "pause_ip":
                reg.pause_ip(account, ip[0])
            elif action == "resume_ip":
                reg.resume_ip(account, ip[0])
            elif action == "weigh_ip":
                reg.set_ip_weight(account, ip[0], 1 + a % 5)
        except DomainError:
            pass

    def _address(self) -> str:
        self.next_ip += 1
        return f"198.51.{self.next_ip // 250}.{1 + self.next_ip % 250}"

    def assert_converged(self, redis_url: str) -> None:
        """The publisher's routing, and Redis's, equal a full build from SQLite, for every server."""
        for sid in self.servers:
            built = replace(build_snapshot(self.store, sid), published_at_ms=0)
            assert replace(self.publisher.routing(sid), published_at_ms=0) == built
            remembered = self.publisher._state[sid].routing  # its packed entries: what compactions join
            assert remembered.encode() == snapshot.encode(remembered.snapshot(remembered.published_at_ms))
            assert replace(current_snapshot(redis_url, sid), published_at_ms=0) == built
        self.publisher.prune_touches()  # the background loop's step
        assert self._rows("SELECT COUNT(*) FROM routing_touches")[0][0] == 0  # pruned once published


operations = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 7), st.integers(0, 7)),
                      min_size=1, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_incremental_publications_equal_a_full_build_at_every_step(redis_url, ops):
    async def scenario():
        with tempfile.TemporaryDirectory() as tmp:
            world = World(Path(tmp), redis_url, full_every=4)
            try:
                await world.redis.flushall()
                await world.publisher.sync()
                for action, a, b in ops:
                    world.do(action, a, b)
                    await world.publisher.sync()
                    world.assert_converged(redis_url)
                assert await world.publisher.check_consistency() == []
                stats = world.publisher.stats
                assert stats.builds == len(world.servers)  # at the start only: every change after is read by id
            finally:
                await world.close()

    asyncio.run(scenario())


async def test_a_one_pool_change_at_2000_pools_reads_that_pool_only(tmp_path, redis_url):
    world = World(tmp_path, redis_url)
    try:
        sid = world.servers[0]
        add_pools(str(tmp_path / "poolmta.db"), sid, 2000)
        await world.publisher.sync()  # the first publication after a start: a full build
        statements: list[str] = []
        reader = world.publisher._reader._reader._conn
        reader.set_trace_callback(statements.append)
        steps = [0]
        reader.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 100)
        build_snapshot(world.publisher._reader._reader, sid)
        full_steps, steps[0] = steps[0], 0
        statements.clear()

        smtp_id, user_id = world._rows("SELECT smtp_id, user_id FROM pools WHERE server_id = "
                                       f"{sid} ORDER BY smtp_id LIMIT 1 OFFSET 1000")[0]
        account = world.registry.get_account(user_id)
        world.registry.set_pool_feed_type(account, smtp_id, "transactional")
        published = await world.publisher.sync()

        assert published == [(sid, world.store.routing_versions()[sid])]
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) <= 8, statements
        route_reads = [s for s in reads if "pools" in s or "ips" in s or "bridges" in s]
        # Every statement that reads the server's routes is limited to the touched ids.
        assert all("json_each" in s or "routing_touches" in s or "mta_servers" in s for s in route_reads), reads
        assert steps[0] * 50 < full_steps, (steps[0], full_steps)
        assert world.publisher.stats.deltas == 1
        assert replace(world.publisher.routing(sid), published_at_ms=0) == replace(
            build_snapshot(world.store, sid), published_at_ms=0)
    finally:
        await world.close()


async def test_a_crash_between_commit_and_publication_converges_at_the_next_start(tmp_path, redis_url):
    world = World(tmp_path, redis_url)
    account = world.accounts[0]
    pool = world.registry.create_pool(account, label="before", server_id=world.servers[0])
    await world.publisher.sync()
    # Committed, never published: the control plane dies here.
    world.registry.provision_ip(account, address="203.0.113.9", smtp_id=pool.smtp_id)
    world.registry.create_pool(account, label="after", server_id=world.servers[1])
    world.publisher.close()

    restarted = SnapshotPublisher(world.store, world.redis)
    world.publisher = restarted
    try:
        await restarted.sync()
        world.assert_converged(redis_url)
        # And the next change is a delta from there.
        world.registry.set_pool_feed_type(account, pool.smtp_id, "alerts")
        await restarted.sync()
        assert restarted.stats.deltas == 1
        world.assert_converged(redis_url)
    finally:
        await world.close()


async def test_the_consistency_check_publishes_sqlites_routing_when_the_remembered_one_differs(
        tmp_path, redis_url):
    world = World(tmp_path, redis_url)
    try:
        account = world.accounts[0]
        pool = world.registry.create_pool(account, label="p", server_id=world.servers[0])
        other = world.registry.create_pool(account, label="q", server_id=world.servers[0])
        await world.publisher.sync()
        # A change that records no touch (its trigger is gone): the deltas miss it.
        with world.store.write() as s:
            s._conn.execute("DROP TRIGGER routing_touch_pools_update")
        world.registry.set_pool_feed_type(account, pool.smtp_id, "silent")
        world.registry.set_pool_headers(account, other.smtp_id, [("X-N", "1")])
        await world.publisher.sync()
        assert world.publisher.routing(world.servers[0]).pool(pool.smtp_id).feed_type == ""
        assert await world.publisher.check_consistency() == [world.servers[0]]
        assert world.publisher.stats.mismatches == 1
        world.assert_converged(redis_url)
        assert await world.publisher.check_consistency() == []
    finally:
        await world.close()


async def test_a_deleted_pool_and_a_revoked_bridge_go_as_tombstones(tmp_path, redis_url):
    world = World(tmp_path, redis_url)
    try:
        account, sid = world.accounts[0], world.servers[0]
        world.registry.create_pool(account, label="main", server_id=sid)
        gone = world.registry.create_pool(account, label="gone", server_id=sid,
                                          headers=[("X-Campaign", "spring")])
        bridge, _ = world.registry.create_bridge(account, name="app", smtp_id=gone.smtp_id)
        await world.publisher.sync()
        world.registry.revoke_bridge(account, bridge.bridge_id)
        world.registry.delete_pool(account, gone.smtp_id)
        await world.publisher.sync()
        routing = world.publisher.routing(sid)
        assert gone.smtp_id not in {p.smtp_id for p in routing.pools} and routing.bridges == ()
        assert world.publisher.stats.builds == len(world.servers)
        world.assert_converged(redis_url)
    finally:
        await world.close()
